"""Peak resident memory of a LiteRT interpreter, run as a fresh process.

Run by file path (not ``-m``) so that only ``ai_edge_litert`` and numpy are imported:
``python _memprobe.py model.tflite num_threads invokes`` prints one JSON line.
"""

import json
import resource
import sys

import numpy as np
from ai_edge_litert.interpreter import Interpreter


def _max_rss_mb() -> float:
    # VmHWM belongs to this process image; ru_maxrss would carry the parent's peak over
    # fork + exec on Linux.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(path: str, num_threads: int, invokes: int) -> dict:
    baseline = _max_rss_mb()
    interpreter = Interpreter(model_path=path, num_threads=num_threads)
    interpreter.allocate_tensors()
    inputs = [(d["index"], np.zeros(d["shape"], d["dtype"]))  # every input (masks too)
              for d in interpreter.get_input_details()]
    for _ in range(invokes):
        for index, x in inputs:
            interpreter.set_tensor(index, x)
        interpreter.invoke()
    peak = _max_rss_mb()
    return {"baseline_mb": baseline, "peak_mb": peak, "interpreter_mb": peak - baseline}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
