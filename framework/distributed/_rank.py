"""One rank's entry point under the launcher: export torchrun's variables, then run the target under mpi4py."""

import os
import sys

# MPICH (Hydra), Open MPI and PMIx name these differently; torchrun-style scripts read RANK, LOCAL_RANK, ...
_VARS = {
    "RANK": ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"),
    "WORLD_SIZE": ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"),
    "LOCAL_RANK": ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK"),
    "LOCAL_WORLD_SIZE": ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"),
}


def main():
    for var, sources in _VARS.items():
        for src in sources:
            if src in os.environ:
                os.environ.setdefault(var, os.environ[src])
                break
    from mpi4py.run import main as mpi4py_main  # aborts the whole job when the target raises

    sys.argv = ["mpi4py", *sys.argv[1:]]
    mpi4py_main()


if __name__ == "__main__":
    main()
