"""`python -m mmdlib.bench NAME [options]`."""
import importlib
import sys

BENCHMARKS = ("codec", "mmd", "hsic", "independence", "generate", "gap")


USAGE = f"usage: python -m mmdlib.bench {{{','.join(BENCHMARKS)}}} [options]  (NAME --help: its options)"


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] in ("-h", "--help"):
        print(USAGE)
        return
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        sys.exit(USAGE)
    module = importlib.import_module(f"mmdlib.bench.{sys.argv[1]}")
    module.main(sys.argv[2:])


if __name__ == "__main__":
    main()
