"""Batching: the OpenAI Files + Batches API, deferred requests, the durable Redis Streams
queue, the worker (provider batch jobs or bounded direct calls) and embeddings coalescing.

Modules: `model` (records, statuses, Redis keys), `files` (file store), `validate` (input
checks), `queue` (streams, results, dead letters), `finalize` (output/error files),
`provider` and `direct` (executors), `worker` (the loop), `coalesce` (embeddings),
`stage` (the gateway side: deferral, coalescing, ledger sync).
"""
