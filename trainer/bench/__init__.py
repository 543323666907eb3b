"""Instruments: the speed and memory benchmark (``run``, on the workload of ``workload``, with
``measure``'s probes), DDP (``ddp``), extraction speed (``extract_speed``) and the ablation
table (``ablation``). ``python -m trainer bench`` runs the benchmark."""
