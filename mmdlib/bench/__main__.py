"""`python -m mmdlib.bench NAME [options]`."""
import importlib
import sys

BENCHMARKS = ("codec", "mmd", "hsic", "independence", "generate", "gap")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        sys.exit(f"usage: python -m mmdlib.bench {{{','.join(BENCHMARKS)}}} [options]")
    module = importlib.import_module(f"mmdlib.bench.{sys.argv[1]}")
    module.main(sys.argv[2:])


if __name__ == "__main__":
    main()
