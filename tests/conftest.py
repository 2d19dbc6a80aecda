import torch

# Tests are small: one thread avoids oversubscription on shared 2-core machines and keeps
# timings steady.
torch.set_num_threads(1)
