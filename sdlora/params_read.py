"""Which keys of params.yaml a stage's code reads, found statically from its source.

Calls are followed from the entry script through its import closure (the modules
:func:`sdlora.deps.source_closure` finds); a name holds the :class:`~sdlora.config.Config` when
it is annotated ``Config``, is an unannotated ``cfg``, or is assigned ``load_config(...)``,
``cfg.for_task(k)``, ``cfg.model_copy(...)``; a section (``cfg.data``) is followed into the
project function it is passed to. Attribute reads on them are the keys read;
``cfg.model_dump(exclude=...)`` reads every key it does not exclude; keys a
``model_copy(update={...})`` replaces are not params any more. Not followed: methods called on
other objects, and a Config kept in a container until a function takes it out under a
``Config`` annotation (then it counts from there).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

PACKAGE = "sdlora"


def _config_fields() -> dict[str, set[str] | None]:
    """{top-level key of params.yaml: its keys, or None for a scalar and the tasks map}."""
    from pydantic import BaseModel

    from sdlora.config import Config

    fields: dict[str, set[str] | None] = {}
    for name, info in Config.model_fields.items():
        kind = info.annotation
        is_section = isinstance(kind, type) and issubclass(kind, BaseModel)
        fields[name] = set(kind.model_fields) if is_section else None  # type: ignore[union-attr]
    return fields


class _Module:
    """One module of the closure: its functions (``f``, ``Class.method``), names and constants."""

    def __init__(self, tree: ast.Module, package: str) -> None:
        self.tree = tree
        self.functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        self.classes: set[str] = set()
        self.bindings: dict[str, tuple[str, str | None]] = {}  # name -> (module, attr or None)
        self.constants: dict[str, Any] = {}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                self.functions[node.name] = node
            elif isinstance(node, ast.ClassDef):
                self.classes.add(node.name)
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        self.functions[f"{node.name}.{item.name}"] = item
            elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                value = _literal(node.value)
                for t in targets:
                    if isinstance(t, ast.Name) and value is not None:
                        self.constants[t.id] = value
        for node in ast.walk(tree):  # imports anywhere, function-level ones included
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        self.bindings[a.asname] = (a.name, None)
                    else:
                        head = a.name.partition(".")[0]
                        self.bindings[head] = (head, None)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                for a in node.names:
                    self.bindings[a.asname or a.name] = (base, a.name)


def _literal(node: ast.expr) -> Any:
    """A literal value (``frozenset({...})`` and ``set(...)`` included), else None."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("frozenset", "set", "tuple", "list")
        and len(node.args) == 1
    ):
        node = node.args[0]
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


Kind = tuple[str, frozenset[str]]  # ("Config" or a section key, keys replaced by code)
Ctx = frozenset[tuple[str, Kind]]  # a function's parameters that hold a Config or a section
Read = Callable[..., None]  # read(key, replaced keys)


class _ParamsReader:
    """Follows calls from an entry script and collects the params keys read on the way.

    A name holds a :data:`Kind`: the whole Config or one section, with the keys code replaced
    (``cfg.model_copy(update={"seed": 1})``: reading ``seed`` there reads no param). Functions
    are visited once per distinct set of such parameters (their ``Ctx``).
    """

    _DUMPS = ("model_dump", "model_dump_json")

    def __init__(self, modules: Mapping[str, str], root: Path) -> None:
        self.fields = _config_fields()
        self.modules: dict[str, _Module] = {}
        for name, rel in modules.items():
            package = name if rel.endswith("__init__.py") else name.rpartition(".")[0]
            tree = ast.parse((root / rel).read_text(), rel)
            self.modules[name] = _Module(tree, package)
        config = self.modules.get(f"{PACKAGE}.config")
        methods = config.functions if config is not None else {}
        self.config_methods = {q[len("Config.") :] for q in methods if q.startswith("Config.")}
        self.reads: dict[str, set[str]] = {}
        self.seen: set[tuple[str, str, Ctx]] = set()
        self.todo: list[tuple[str, str, Ctx]] = []

    def run(self, script_module: str = "__main__") -> dict[str, set[str]]:
        """Visit the script's module-level code, then every project function it reaches."""
        self._visit(script_module, "<module>", self.modules[script_module].tree, frozenset())
        while self.todo:
            module, qualname, ctx = self.todo.pop()
            self._visit(module, qualname, self.modules[module].functions[qualname], ctx)
        return self.reads

    # -- resolving names to project functions ------------------------------------------------

    def _resolve(self, module: str, name: str, depth: int = 0) -> tuple[str, str | None] | None:
        """``name`` in ``module`` -> (module, function or class), or (module, None): a module."""
        mod = self.modules.get(module)
        if mod is None or depth > 8:
            return None
        if name in mod.functions or name in mod.classes:
            return module, name
        if name in mod.bindings:
            target, attr = mod.bindings[name]
            if attr is None:
                return (target, None) if target in self.modules else None
            if f"{target}.{attr}" in self.modules:
                return f"{target}.{attr}", None
            return self._resolve(target, attr, depth + 1)
        return None

    def _callee(self, module: str, node: ast.expr) -> tuple[str, str] | None:
        """The project function (a class: its ``__init__``) ``node`` names, else None."""
        target = None
        if isinstance(node, ast.Name):
            target = self._resolve(module, node.id)
        elif isinstance(node, ast.Attribute):
            base = self._callee_module(module, node.value)
            if base is not None:
                sub = f"{base}.{node.attr}"
                target = (sub, None) if sub in self.modules else self._resolve(base, node.attr)
        if target is None or target[1] is None:
            return None
        mod, name = target
        if name in self.modules[mod].classes:
            init = f"{name}.__init__"
            return (mod, init) if init in self.modules[mod].functions else None
        return mod, name

    def _callee_module(self, module: str, node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            target = self._resolve(module, node.id)
        elif isinstance(node, ast.Attribute):
            base = self._callee_module(module, node.value)
            sub = f"{base}.{node.attr}" if base is not None else None
            return sub if sub in self.modules else None
        else:
            return None
        return target[0] if target is not None and target[1] is None else None

    def _follow(self, module: str, qualname: str, ctx: Ctx = frozenset()) -> None:
        if (module, qualname, ctx) not in self.seen:
            self.seen.add((module, qualname, ctx))
            self.todo.append((module, qualname, ctx))

    def _bind(self, callee: tuple[str, str], call: ast.Call, kinds: dict[int, Kind]) -> Ctx:
        """The callee's parameters that receive a Config or a section at this call."""
        fn = self.modules[callee[0]].functions[callee[1]]
        params = [a.arg for a in [*fn.args.posonlyargs, *fn.args.args]]
        if "." in callee[1]:
            params = params[1:]  # self
        bound = {}
        for i, arg in enumerate(call.args):
            if i < len(params) and id(arg) in kinds:
                bound[params[i]] = kinds[id(arg)]
        for kw in call.keywords:
            if kw.arg is not None and id(kw.value) in kinds:
                bound[kw.arg] = kinds[id(kw.value)]
        return frozenset(bound.items())

    # -- which expressions hold a Config or one of its sections --------------------------------

    def _is_config(self, ann: ast.expr | None) -> bool:
        if isinstance(ann, ast.Constant) and isinstance(ann.value, str):
            return ann.value.rpartition(".")[2] == "Config"
        return (isinstance(ann, ast.Name) and ann.id == "Config") or (
            isinstance(ann, ast.Attribute) and ann.attr == "Config"
        )

    def _kind(self, node: ast.expr, names: dict[str, Kind], module: str) -> Kind | None:
        """What ``node`` holds: the Config or a section (with the keys replaced), else None."""
        if isinstance(node, ast.Name):
            return names.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self._kind(node.value, names, module)
            if base is None or base[0] != "Config" or self.fields.get(node.attr) is None:
                return None
            if node.attr in base[1]:
                return None  # replaced as a whole: not a param any more
            return node.attr, frozenset(k for k in base[1] if k.startswith(node.attr + "."))
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr in ("for_task", "model_copy"):
                base = self._kind(f.value, names, module)
                if base is None or f.attr == "for_task":
                    return base
                return base[0], base[1] | self._replaced(node, base[0], names, module)
            callee = self._callee(module, f)
            if callee in (
                (f"{PACKAGE}.config", "load_config"),
                (f"{PACKAGE}.config", "parse_config"),
            ):
                return "Config", frozenset()
        return None

    def _replaced(
        self, call: ast.Call, kind: str, names: dict[str, Kind], module: str
    ) -> frozenset[str]:
        """The keys ``X.model_copy(update={...})`` replaces (none if it cannot tell)."""
        update = next((kw.value for kw in call.keywords if kw.arg == "update"), None)
        if update is None:
            return frozenset()
        prefix = "" if kind == "Config" else f"{kind}."
        if not isinstance(update, ast.Dict) or not all(
            isinstance(k, ast.Constant) and isinstance(k.value, str) for k in update.keys
        ):
            return frozenset()  # unknown keys: assume none replaced (reads stay reads)
        out: set[str] = set()
        for k, v in zip(update.keys, update.values, strict=True):
            key = f"{prefix}{k.value}"  # type: ignore[union-attr]  # a str Constant (checked)
            inner = self._kind(v, names, module)
            if kind == "Config" and inner is not None and inner[0] == key:
                out |= inner[1]  # cfg.train.model_copy(update=...): only those keys
            else:
                out.add(key)
        return frozenset(out)

    def _names(self, fn: ast.AST, ctx: Ctx, module: str) -> dict[str, Kind]:
        """{name: Kind} in ``fn`` and the functions nested in it."""
        names: dict[str, Kind] = dict(ctx)
        root: Kind = ("Config", frozenset())
        for node in ast.walk(fn):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                a = node.args
                for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs]:
                    if arg.arg in names and node is fn:
                        continue  # bound by the caller
                    if self._is_config(arg.annotation) or (
                        arg.annotation is None and arg.arg == "cfg"
                    ):
                        names.setdefault(arg.arg, root)
            elif (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and self._is_config(node.annotation)
            ):
                names.setdefault(node.target.id, root)
        for _ in range(3):  # aliases of aliases
            for node in ast.walk(fn):
                if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    kind = self._kind(node.value, names, module)
                    if kind is not None and len(targets) == 1 and isinstance(targets[0], ast.Name):
                        names[targets[0].id] = kind
        return names

    # -- the reads --------------------------------------------------------------------------

    def _dump(self, call: ast.Call, module: str) -> set[str]:
        """The top-level keys ``cfg.model_dump(...)`` reads: every one it does not exclude."""
        keys = set(self.fields)
        for kw in call.keywords:
            v = kw.value
            lit = (
                self.modules[module].constants.get(v.id) if isinstance(v, ast.Name) else _literal(v)
            )
            if kw.arg == "exclude":
                if isinstance(lit, dict):
                    keys -= {k for k, x in lit.items() if x is True}
                elif isinstance(lit, set | frozenset | tuple | list):
                    keys -= set(lit)
            elif kw.arg == "include" and isinstance(lit, set | frozenset | tuple | list | dict):
                keys &= set(lit)
        return keys

    def _visit(self, module: str, qualname: str, fn: ast.AST, ctx: Ctx) -> None:
        where = f"{module}.{qualname}"
        names = self._names(fn, ctx, module)
        parent: dict[int, ast.AST] = {}
        kinds: dict[int, Kind] = {}
        for node in ast.walk(fn):
            for child in ast.iter_child_nodes(node):
                parent[id(child)] = node
            if isinstance(node, ast.expr) and (kind := self._kind(node, names, module)):
                kinds[id(node)] = kind

        def read(key: str, replaced: frozenset[str] = frozenset()) -> None:
            if key not in replaced and key.partition(".")[0] not in replaced:
                self.reads.setdefault(key, set()).add(where)

        for node in ast.walk(fn):
            up = parent.get(id(node))
            if isinstance(node, ast.Call):
                self._call(node, module, kinds, read)
            elif (
                isinstance(node, ast.Name)
                and isinstance(node.ctx, ast.Load)
                and not (isinstance(up, ast.Call) and up.func is node)
                and (callee := self._callee(module, node)) is not None
            ):
                self._follow(*callee)  # a function used as a callback
            if isinstance(node, ast.Attribute) and id(node) not in kinds:
                base = kinds.get(id(node.value))
                if base is not None:
                    self._attribute(node, base, up, module, read)
            kind = kinds.get(id(node))
            if kind is None or kind[0] == "Config":
                continue
            if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
                continue
            if isinstance(up, ast.Attribute) and up.value is node:
                continue  # read as ``section.key`` (see _attribute)
            if isinstance(up, ast.Assign | ast.AnnAssign) and up.value is node:
                continue  # held in a name: read through it
            if isinstance(up, ast.Dict) and self._is_update(up, parent):
                continue  # part of a model_copy: read through the copy
            call = parent.get(id(up)) if isinstance(up, ast.keyword) else up
            if (
                isinstance(call, ast.Call)
                and call.func is not node
                and self._callee(module, call.func) is not None
            ):
                continue  # a project function takes it: read there
            read(kind[0], kind[1])

    @staticmethod
    def _is_update(node: ast.Dict, parent: dict[int, ast.AST]) -> bool:
        """Whether ``node`` is the ``update={...}`` of a ``model_copy`` call."""
        kw = parent.get(id(node))
        call = parent.get(id(kw))
        return (
            isinstance(kw, ast.keyword)
            and kw.arg == "update"
            and isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr == "model_copy"
        )

    def _call(self, node: ast.Call, module: str, kinds: dict[int, Kind], read: Read) -> None:
        """Follow a call into the project; ``cfg.method(...)``; ``getattr(cfg, ...)``."""
        f = node.func
        callee = self._callee(module, f)
        if callee is not None:
            self._follow(*callee, self._bind(callee, node, kinds))
        if isinstance(f, ast.Attribute):
            base = kinds.get(id(f.value))
            if base is not None and base[0] == "Config" and f.attr in self.config_methods:
                target = (f"{PACKAGE}.config", f"Config.{f.attr}")
                ctx = self._bind(target, node, kinds) | {("self", base)}
                self._follow(*target, frozenset(ctx))
        elif isinstance(f, ast.Name) and f.id in ("getattr", "vars") and node.args:
            base = kinds.get(id(node.args[0]))
            if base is not None:
                for key in self.fields if base[0] == "Config" else [base[0]]:
                    read(key, base[1])

    def _attribute(
        self, node: ast.Attribute, base: Kind, up: ast.AST | None, module: str, read: Read
    ) -> None:
        """``X.attr`` with X a Config or a section (not itself a section)."""
        kind, replaced = base
        name = node.attr
        if kind != "Config":
            if name in (self.fields[kind] or ()):
                read(f"{kind}.{name}", replaced)
            elif name != "model_copy":
                read(kind, replaced)
        elif name in self._DUMPS and isinstance(up, ast.Call) and up.func is node:
            for key in self._dump(up, module):
                read(key, replaced)
        elif name in self.fields:
            read(name, replaced)  # a scalar, or the tasks map
        elif name in self.config_methods:
            if not (isinstance(up, ast.Call) and up.func is node):
                self._follow(f"{PACKAGE}.config", f"Config.{name}", frozenset({("self", base)}))
        elif name not in ("for_task", "model_copy"):
            for key in self.fields:  # pydantic internals or something new: everything
                read(key, replaced)


def read_params(modules: Mapping[str, str], root: Path) -> dict[str, set[str]]:
    """{params key: the functions that read it} for the code of ``modules``
    ({module name: file relative to ``root``}, the entry script as ``__main__``).

    Keys are top-level (``seed``, ``tasks``, ``final_task``, a whole section such as ``data``)
    or ``section.key`` (``data.image_size``).
    """
    return _ParamsReader(modules, root).run()
