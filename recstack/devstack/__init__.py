"""The embedded dev stack: Kafka (Tansu) and Redis on free ports, a process supervisor, `recstack up`
and `recstack demo`.

    embedded.py    free_port, EmbeddedKafka, EmbeddedRedis (topics: recstack.events.topics.ensure_topics)
    process.py     ManagedProcess (one child, log file, no leftovers)
    supervisor.py  Supervisor, ServiceSpec, GrpcHealth, HttpHealth, shutdown_signals
    bundle.py      ensure_bundle / train_small_bundle (TrainConfig.small() on synthetic data)
    up.py          StackConfig, stack() (context manager), run_stack() (`recstack up`)
    demo.py        run_demo() (`recstack demo`)
    floor.py       the transport floor servers `recstack bench serve` measures against

Submodules are imported explicitly so that importing one does not pull in grpc, torch or rich.
"""
