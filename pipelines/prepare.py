"""DVC stage ``prepare``: the configured benchmark into per-task Parquet splits + manifest.json.

    python pipelines/prepare.py --params params.yaml --out data/prepared

Reads the ``seed`` and ``data`` sections of the params file; all logic is
:func:`sdlora.data.prepare.prepare`. Bad input exits with code 2 and a message on stderr.
"""

from __future__ import annotations

import argparse
import sys

from sdlora.config import ConfigError, load_config
from sdlora.data.prepare import prepare
from sdlora.data.source import DataError


def main(argv: list[str] | None = None) -> int:
    """Parse ``--params`` and ``--out``, load the config, run the prepare stage."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.params)
        prepare(cfg.data, seed=cfg.seed, out=args.out, progress=cfg.progress)
    except (ConfigError, DataError) as err:
        print(f"prepare: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
