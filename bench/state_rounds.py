"""Do machine speed states switch within one process, and does the probe tell them apart? Round by round.

One process times a model for 20 s in rounds: a probe (twenty tiny numpy operations, median of
five) before and after each burst of 20 inferences. Prints histograms of the probe times and of
the bursts' median model times, then the model's median in rounds whose probes were both fast
(< 38 us), both slow (> 40 us), or mixed. The thresholds are this VM's (2026-12-02); the
product chooses its own (profilers.machine_state.split_states).

    .venv/bin/python bench/state_rounds.py bench/results/rl50_auto_ctx/pruned_s2.onnx
"""
import sys
import time

import numpy as np
import onnxruntime as ort

so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
feed = {i.name: x}
a = np.random.rand(64).astype(np.float32)
def probe(n=5):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        for _ in range(20): a * 1.5 + a
        ts.append(time.perf_counter() - t)
    return np.median(ts) * 1e6
for _ in range(50): s.run(None, feed)
t0 = time.perf_counter(); rows = []
while time.perf_counter() - t0 < 20:
    p1 = probe()
    ts = []
    for _ in range(20):
        t = time.perf_counter(); s.run(None, feed); ts.append(time.perf_counter() - t)
    p2 = probe()
    rows.append((p1, p2, np.median(ts) * 1e3))
r = np.array(rows)
print(len(r))
h, e = np.histogram(np.log(r[:,0]), 20); print("probe hist", h, np.exp(e).round(1))
h, e = np.histogram(r[:,2], 20); print("model hist", h, e.round(3))
fast = (r[:,0] < 38) & (r[:,1] < 38); slow = (r[:,0] > 40) & (r[:,1] > 40)
print("both-fast rounds", fast.sum(), np.median(r[fast,2]), "both-slow", slow.sum(), np.median(r[slow,2]), "mixed", len(r)-fast.sum()-slow.sum())
print("model in fast rounds p10/p90", np.percentile(r[fast,2],[10,90]), "slow", np.percentile(r[slow,2],[10,90]))
