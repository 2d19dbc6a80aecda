"""`python -m mmdlib.train_codec`: the command line of `mmdlib.train.codec`."""
from mmdlib.train.codec import main

if __name__ == "__main__":
    main()
