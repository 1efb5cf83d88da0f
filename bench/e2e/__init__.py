"""``modstream bench``: the pipeline end to end, against raw Triton and against a naive consumer.

One run starts the Tansu broker and tritonserver on loopback and measures, on the same JPEG
photos (scikit-image's sample photos upscaled to the requested size, with mild noise):

- **raw Triton**: the photos pre-decoded to ``(N, S, S, 3)`` uint8, sent through
  ``TritonClassifier`` in batches of the consumer's ``max_batch_size`` with as many batches in
  flight as the consumer allows. No Kafka, no decoding: the ceiling the pipeline aims at.
- **end to end**: a backlog of ImageEvents with inline base64, published to a partitioned input
  topic before the consumer starts, drained by the real consumer (``consumer.service.serve``)
  with its configured batching; then events paced at half the measured rate, for latency.
- **naive**: a sequential consumer that reads one record, parses it, decodes it, sends that one
  image to Triton, produces the decision, waits for the ack and commits before reading the
  next. It reads the same backlog in its own group and calls the functions the pipeline calls
  (``parse_event``, ``decode_base64``, ``decode_image``), so the difference between the two is
  what batching and pipelining buy, not a different decoder.

Throughputs count decisions between the first and the last ``decided_at`` read back from
Kafka, which leaves group joins and startup checks out; the time until every offset is
committed is reported beside them. Results go to ``<out>/bench-<UTC timestamp>.json`` and
``<out>/latest.json``. The targets are reported as met or missed, never enforced.

The modules, in the order a run uses them: ``config`` (arguments, the consumer's settings on the
run's topics), ``images``, ``phases`` (raw Triton, backlog, latency, naive), ``publish`` (events
in, commits, outcomes read back), ``naive``, ``outcomes`` (throughput and latency from the
decisions), ``cpu`` (CPU and memory by process group), ``report`` (ratios, targets, JSON,
table) and ``run`` (the entry point and its signal handling).
"""

from __future__ import annotations

from bench.e2e.report import TARGET_VS_NAIVE, TARGET_VS_RAW_TRITON
from bench.e2e.results import BenchmarkStalled
from bench.e2e.run import run_benchmark

__all__ = ["TARGET_VS_NAIVE", "TARGET_VS_RAW_TRITON", "BenchmarkStalled", "run_benchmark"]
