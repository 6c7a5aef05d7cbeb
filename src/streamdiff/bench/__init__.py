"""`streamdiff bench`: latency, throughput, energy and memory of streams, beside the pipelines users would run."""
