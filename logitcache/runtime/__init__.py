"""The runtime leaf every stage may import: `device` (rank and world from torchrun, the device, the precision and
autocast, the process group and its collectives) and `process` (heap and OpenMP settings made before torch is
imported). Importing this package imports nothing: `process` must load without torch."""
