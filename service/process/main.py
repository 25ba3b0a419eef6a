"""`dcgan-serve`: flags and environment -> ServeConfig -> one server until SIGTERM (or, with
--processes N, the supervisor's N), and the exit code: 1 with the reason for a bad model
file, a taken port or a missing CUDA.
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
import threading
import time

from service.errors import ServiceError
from service.process.config import ServeConfig, config_from_args
from service.process.server import create_server
from service.process.supervisor import supervise

log = logging.getLogger("dcgan-serve")


def serve(config: ServeConfig) -> None:
    running = create_server(config)
    # The handlers only note the signal: a handler runs on the main thread between two
    # bytecodes, perhaps inside a lock it would then wait for (an Event's, say) for ever.
    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: received.append(signum))
    # `kill -USR1 <pid>` prints every thread's stack to stderr: how to see what a stuck
    # server is waiting on without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    while True:
        # Wake up now and then rather than block for good: a signal that lands on one of
        # grpc's or onnxruntime's threads only flags the main thread, whose Python handler
        # then runs the next time it executes bytecode.
        while not received:
            time.sleep(0.25)
        signum = received.pop(0)
        if signum != signal.SIGHUP:
            break
        log.info("SIGHUP: reloading the model files")
        threading.Thread(target=running.reload, name="reload", daemon=True).start()
    log.info("%s: draining (up to %.1fs)", signal.Signals(signum).name, config.grace_seconds)
    # A watchdog for the drain itself: should anything hang past the grace period, print
    # every thread's stack and exit 1 rather than wait for a SIGKILL that explains nothing.
    faulthandler.dump_traceback_later(config.grace_seconds + 15, exit=True)
    running.stop()
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    config = config_from_args(argv)
    logging.basicConfig(level=config.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if config.resolved_processes > 1:
            return supervise(config, sys.argv[1:] if argv is None else argv)
        serve(config)
    except ServiceError as exc:  # bad model file, port in use, CUDA missing: say which, once
        print(f"dcgan-serve: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
