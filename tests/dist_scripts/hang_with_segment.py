"""A worker that leaves a DeepSpeed-named shared-memory segment behind and then hangs (for the launcher's tests).

`deepspeed --num_gpus 2 hang_with_segment.py`: each rank creates `/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_
<port>_<rank>` as DeepSpeed's CPU op would, then sleeps until the launcher stops it.
"""

import os
import time
from pathlib import Path


def wait_forever() -> None:
    while True:
        time.sleep(1)


if __name__ == "__main__":
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ['MASTER_ADDR']}_{os.environ['MASTER_PORT']}"
    Path(f"/dev/shm/{name}_{os.environ['RANK']}").write_bytes(b"\0" * 4096)
    print(f"rank {os.environ['RANK']} waiting", flush=True)
    wait_forever()
