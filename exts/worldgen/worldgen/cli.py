"""``worldgen`` command line: small entry points over library functions.

Exit codes: 0 success, 1 a run failed, 2 bad input (a one-line ``file:line: field: message`` per
problem on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .manifest import ManifestError, load_manifest

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class UsageError(Exception):
    """Bad input that is not a manifest problem (a bad path, a flag out of range)."""


def _cmd_validate(args: argparse.Namespace) -> int:
    failed = False
    for path in args.paths:
        try:
            manifest = load_manifest(path)
        except ManifestError as exc:
            print(exc, file=sys.stderr)
            failed = True
            continue
        print(f"{path}: ok  name={manifest.name} hash={manifest.content_hash()[:12]}")
    return EXIT_BAD_INPUT if failed else EXIT_OK


def _cmd_compile(args: argparse.Namespace) -> int:
    from .stage import compile_stage

    manifest = load_manifest(args.manifest)
    output = Path(args.output) if args.output else Path(f"{manifest.name}_seed{args.seed}.usda")
    if output.suffix != ".usda":
        raise UsageError(f"{output}: -o must name a .usda file")
    path, scene = compile_stage(manifest, args.seed, output, base_dir=Path(args.manifest).resolve().parent)
    objects = ", ".join(f"{o.name}@({o.position[0]:.3f},{o.position[1]:.3f})" for o in scene.objects)
    print(f"wrote {path}  manifest={manifest.name} seed={args.seed} hash={manifest.content_hash()[:12]}")
    print(f"  objects: {objects}")
    print(f"  cameras: {', '.join(c.name for c in manifest.cameras)}")
    return EXIT_OK


def _seed_arg(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**31:
        raise argparse.ArgumentTypeError(f"seed must be in [0, 2**31), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worldgen",
        description="Scenario manifests to USD stages, seed trajectories, world-model branches, "
        "physics checks and policies.",
    )
    parser.add_argument("--version", action="version", version=f"worldgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check manifests; print one line per problem")
    p.add_argument("paths", nargs="+", metavar="PATH", help="scenario manifest YAML files")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("compile", help="compile a manifest and a seed into a USD stage (.usda)")
    p.add_argument("manifest", metavar="MANIFEST", help="scenario manifest YAML file")
    p.add_argument(
        "--seed", type=_seed_arg, default=0, help="which draw of the randomised values (default 0)"
    )
    p.add_argument("-o", "--output", metavar="STAGE", help="output .usda (default NAME_seedN.usda)")
    p.set_defaults(func=_cmd_compile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ManifestError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_INPUT
    except UsageError as exc:
        print(f"worldgen {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
