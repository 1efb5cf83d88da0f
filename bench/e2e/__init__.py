"""``modstream bench``: the pipeline end to end, against the machine's limit, raw Triton, the
consumer a user would write instead, and a naive consumer.

One run starts the Tansu broker and tritonserver on loopback and measures, on the same JPEG
photos (scikit-image's sample photos upscaled to the requested size, with mild noise):

- **the stages alone**: parse + base64 + decode of one event on one thread (CPU time), Triton
  on pre-decoded ``(N, S, S, 3)`` uint8 batches of each size up to the consumer's
  ``max_batch_size`` (images/s and tritonserver's CPU per image), and the broker's CPU per
  event under a consumer that only fetches, produces and commits. The **machine limit** is
  usable cores / the sum of those per-event CPU costs (inference at its cheapest batch size).
- **end to end**, in each consumer mode (``threads``, ``workers``, ``triton``: those this
  consumer has settings for, see ``modes``): a backlog of ImageEvents with inline base64,
  published to a partitioned input topic before the consumer starts, drained by
  ``modstream run`` in a process of its own; then, for the first mode, events paced at half
  the measured rate, for latency.
- **peer**: the consumer a user would write instead: each image its own Triton request, many
  in flight, Triton's dynamic batcher doing all the batching.
- **naive**: a sequential consumer that reads one record, parses, decodes, sends that one
  image to Triton, produces the decision, waits for the ack and commits before the next.

The peer and naive consumers call the functions the pipeline calls (``parse_event``,
``decode_base64``, ``decode_image``), so the differences are what batching and pipelining
buy, not a different decoder. Every consumer runs in a process group of its own; its CPU
(and Triton's and the broker's) per decided event is read between its first and last
decision, the same window as its throughput, and compared with the stages alone.

Throughputs count decisions between the first and the last ``decided_at`` read back from
Kafka, which leaves group joins and startup checks out; the time until every offset is
committed is reported beside them. Results go to ``<out>/bench-<UTC timestamp>.json`` and
``<out>/latest.json``. The targets are reported as met or missed, never enforced.

The modules, in the order a run uses them: ``config`` (arguments, the consumer's settings on the
run's topics), ``modes``, ``images``, ``phases`` (the order of the run), ``stages`` (decode and
raw Triton alone), ``publish`` (events in, commits, outcomes read back), ``consumers`` (each
consumer over the backlog, watched), ``child`` (consumer processes and their environment),
``baselines`` (the entry point of ``naive``, ``peer`` and ``passthrough``), ``outcomes``
(throughput and latency from the decisions), ``cpu`` (CPU and memory by process group,
sampled), ``ceiling`` (the machine limit and each consumer's CPU against it), ``report`` (ratios,
targets, JSON), ``table`` and ``run`` (the entry point and its signal handling).
"""

from __future__ import annotations

from bench.e2e.ceiling import TARGET_OUTSIDE_DECODE_AND_INFERENCE_MS, TARGET_VS_MACHINE_LIMIT
from bench.e2e.modes import MODES, supported_modes
from bench.e2e.report import TARGET_VS_NAIVE, TARGET_VS_RAW_TRITON
from bench.e2e.results import BenchmarkStalled
from bench.e2e.run import run_benchmark

__all__ = [
    "MODES",
    "TARGET_OUTSIDE_DECODE_AND_INFERENCE_MS",
    "TARGET_VS_MACHINE_LIMIT",
    "TARGET_VS_NAIVE",
    "TARGET_VS_RAW_TRITON",
    "BenchmarkStalled",
    "run_benchmark",
    "supported_modes",
]
