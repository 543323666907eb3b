"""Instruments: the speed and memory benchmark (``run``, on the workload of ``workload``, with
``measure``'s probes), DDP (``ddp``), extraction speed (``extract_speed``), enrolment memory
(``enroll_memory``), the demo ablation table (``ablation``), and the robustness suite
(``robustness``, over the data of ``profiles``, against the floor of ``linear``, and on the raw
media of ``emotional_media``). ``python -m trainer bench`` runs the benchmark."""
