"""`python -m mmdlib.train_lm`: the command line of `mmdlib.train.lm`."""
from mmdlib.train.lm import main

if __name__ == "__main__":
    main()
