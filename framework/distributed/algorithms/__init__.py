"""conch.distributed.algorithms: DDP communication hooks (``ddp_comm_hooks``), as in torch.distributed.algorithms."""
