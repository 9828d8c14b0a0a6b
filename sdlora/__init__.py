"""sdlora: SD-LoRA for rehearsal-free class-incremental learning."""
