"""One warm process: handle the same payload over and over, print per-payload timings.

    python bench/warm_worker.py {lambda|anchor} PAYLOAD WARMUP COUNT

``lambda``: nb2task's Lambda handler (NB2TASK_NOTEBOOK, NB2TASK_ENGINE and the S3
endpoint come from the environment), the record uploaded to S3 (that upload timed on its
own). ``anchor``: the
hand-written stactask Task's ``handler``. Prints one JSON line.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    kind, payload_path, warmup, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    payload = json.loads(Path(payload_path).read_text())
    puts: list[float] = []
    if kind == "lambda":
        import nb2task
        from nb2task import publish

        upload = publish.upload_record

        def timed_upload(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return upload(*args, **kwargs)  # type: ignore[arg-type]
            finally:
                puts.append(time.perf_counter() - start)

        publish.upload_record = timed_upload  # type: ignore[assignment]
        handle = nb2task.lambda_handler
        call = lambda: handle(copy.deepcopy(payload), None)  # noqa: E731
    else:
        from anchor_task import MinimalTask

        call = lambda: MinimalTask.handler(copy.deepcopy(payload))  # noqa: E731
    for _ in range(warmup):
        call()
    puts.clear()
    times = []
    for _ in range(count):  # back to back, the hardest case for a warm engine
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
    assert out["features"], out
    result: dict[str, object] = {"median_s": statistics.median(times), "all_s": times}
    if kind == "lambda":
        from nb2task import lambda_function

        history = list(lambda_function._runner().executor.history)[-count:]
        private = [h.get("private_kb") or 0 for h in history]
        result["private_kb_per_payload"] = statistics.median(private) if private else None
        result["record_put_s"] = statistics.median(puts) if puts else None
    print(json.dumps(result))


if __name__ == "__main__":
    main()
