"""`python -m mmdlib.bench NAME [options]`."""
import importlib
import sys

BENCHMARKS = ("codec", "mmd", "hsic", "independence", "generate", "gap", "lm")


USAGE = f"usage: python -m mmdlib.bench {{{','.join(BENCHMARKS)}}} [options]  (NAME --help: its options)"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    if not argv or argv[0] not in BENCHMARKS:
        sys.exit(USAGE)
    module = importlib.import_module(f"mmdlib.bench.{argv[0]}")
    module.main(argv[1:])


if __name__ == "__main__":
    main()
