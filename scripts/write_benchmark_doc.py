"""Write ``docs/benchmarks.md`` and its plots from ``docs/assets/benchmark_cpu.csv``: every number on that page comes from it.

Usage (from the repository root, after ``make benchmark``)::

    python scripts/write_benchmark_doc.py
"""

import statistics
from pathlib import Path
from lightning_srigl.benchmark.report import markdown_table, plot, plot_paths, read_csv, summarize

raw = read_csv(Path("docs/assets/benchmark_cpu.csv"))
summary = summarize(raw, "min")
loads = [r["loadavg_1m"] for r in raw]

def pick(**kw):
    return [s for s in summary if all(s[k] == v for k, v in kw.items())]

def one(**kw):
    (s,) = pick(**kw)
    return s

head = ["| layer | threads | batch | dense µs | CSR µs | condensed µs | × dense | × CSR |", "|---|---|---|---|---|---|---|---|"]
for shape in [(3072, 768), (768, 3072)]:
    for t in (1, 2):
        for b in (1, 256):
            s = one(structure="srigl", in_features=shape[0], out_features=shape[1], sparsity=0.9, batch=b, threads=t, cache="hot")
            head.append(f"| {shape[0]}→{shape[1]} | {t} | {b} | {s['dense_fp32_us']} | {s['csr_fp32_us']} | {s['condensed_fp32_us']} | {s['cond_vs_dense']} | {s['cond_vs_csr']} |")
headline = "\n".join(head)

cold = ["| layer | sparsity | threads | dense µs | CSR µs | condensed µs | × dense | × CSR | byte-count ceiling | share of ceiling |", "|---|---|---|---|---|---|---|---|---|---|"]
for s in pick(cache="cold"):
    share = s["cond_vs_dense"] / s["byte_ceiling"]
    cold.append(f"| {s['in_features']}→{s['out_features']} | {s['sparsity']:.2f} | {s['threads']} | {s['dense_fp32_us']} | {s['csr_fp32_us']} | {s['condensed_fp32_us']} | {s['cond_vs_dense']} | {s['cond_vs_csr']} | {s['byte_ceiling']} | {share:.0%} |")
cold = "\n".join(cold)

nm = ["| layer | threads | batch | 2:4 condensed × dense | 2:4 condensed × CSR | 2:4 bf16 condensed × bf16 dense | SRigL 90 % condensed × dense (same shape/batch/threads) |", "|---|---|---|---|---|---|---|"]
for s in pick(structure="2:4"):
    srigl = one(structure="srigl", in_features=s["in_features"], out_features=s["out_features"], sparsity=0.9, batch=s["batch"], threads=s["threads"], cache="hot")
    nm.append(f"| {s['in_features']}→{s['out_features']} | {s['threads']} | {s['batch']} | {s['cond_vs_dense']} | {s['cond_vs_csr']} | {s.get('cond_bf16_vs_dense_bf16', '')} | {srigl['cond_vs_dense']} |")
nm = "\n".join(nm)

bf = ["| layer | sparsity | threads | dense bf16 × dense fp32 | condensed fp32 × dense fp32 | condensed bf16 × dense bf16 |", "|---|---|---|---|---|---|"]
for s in pick(structure="srigl", batch=256, cache="hot"):
    bf.append(f"| {s['in_features']}→{s['out_features']} | {s['sparsity']:.2f} | {s['threads']} | {s['dense_bf16_vs_dense_fp32']} | {s['cond_vs_dense']} | {s['cond_bf16_vs_dense_bf16']} |")
bf = "\n".join(bf)
bf_range = [s["dense_bf16_vs_dense_fp32"] for s in pick(structure="srigl", batch=256, cache="hot")]

mem = {f"{s['in_features']}→{s['out_features']}": s["memory_ratio"] for s in pick(structure="srigl", sparsity=0.9, cache="hot", batch=1, threads=1)}
mem_text = ", ".join(f"{k}: {v}" for k, v in mem.items())

figures = plot_paths(raw, Path("docs/assets"), "benchmark_cpu")
for (threads, shape), path in figures.items():  # the plots, like the page, come from the CSV
    plot(raw, path, threads, shape, "min")
plots = "\n\n".join(
    f"[![{shape[0]}→{shape[1]}, {threads} thread(s)](assets/{path.name})](assets/{path.name})"
    for (threads, shape), path in figures.items()
)

errs = max(r["max_abs_err"] for r in raw if r["method"].endswith("fp32"))

doc = f"""# Benchmarks

All numbers on this page come from one run of the benchmark `LightningModule`
(`lightning_srigl.benchmark.BenchmarkModule`, run through `Trainer.test`):

```bash
nice -n -10 lightning-srigl benchmark --config configs/benchmark_cpu.yaml
```

It wrote [`assets/benchmark_cpu.csv`](assets/benchmark_cpu.csv) (one row per case and method: median
and minimum time, weight bytes, max abs error against the masked dense fp32 layer, load average) and
[`assets/benchmark_cpu_summary.csv`](assets/benchmark_cpu_summary.csv) (one row per case, with ratios),
and the plots below; `scripts/write_benchmark_doc.py` then wrote this page from the CSV.
`make benchmark` runs both (without `nice`).

## Machine, and how to read these numbers

* CPU: KVM guest with 2 vCPUs of an Intel Xeon (Sapphire Rapids class: AVX-512, AVX512-BF16, AMX-BF16),
  L2 2 MiB per core, L3 105 MiB as reported by the VM, 23 GiB RAM. torch 2.13.0+cpu, gcc 12.
* Load: the 1-minute load average recorded with each row was {min(loads)}–{max(loads)} (median
  {statistics.median(loads)}) on 2 cores; the benchmark ran at `nice -n -10` with nothing else of ours
  running. This is a shared VM: ratios use the **minimum** over each method's timed samples
  (`statistic: min`: a preempted sample only ever looks slower); medians are in the CSV. The 2-thread
  columns are the least stable (an OpenMP barrier waits for the slower thread).
* Method: for each case one random masked fp32 layer (constant fan-in `k = round((1-s)·in)` per
  neuron, no ablation; 2:4 rows: a random 2:4 mask) is built; every method is built from it and checked
  against the masked dense output (largest fp32 error in the run: {errs:.2g}); then timed: warm-up, then
  samples of ~1 ms of back-to-back calls for at least 0.3 s and 7 samples per method, `torch.set_num_threads`
  1 or 2. Hot-cache samples are taken in interleaved rounds (one sample of each method in turn,
  each after one untimed call that re-warms its caches), so every method of a case sees the same
  machine; cold-cache methods run one after the other. Methods: `dense_fp32`/`dense_bf16` (`nn.Linear`, bf16 uses AMX via oneDNN), `csr_fp32`
  (torch sparse CSR: `F.linear` at batch 1, `addmm` above), `condensed_fp32`/`condensed_bf16`
  (`CondensedLinear`: C++/OpenMP kernel, int16 indices).
* Cold cache: batch 1 while cycling through enough independent copies of the layer that the dense
  copies total ≥ 1 GB (far above the L3), so every call streams its weights from DRAM, as in a whole
  network. The byte-count ceiling is dense bytes / (values + indices bytes) = 4·in / (6·k).

## Headline: 90 % sparsity (the paper's operating point)

Condensed fp32 against dense fp32 and torch CSR, same run, hot cache (× = reference time / condensed
time, > 1: condensed is faster):

{headline}

For comparison, the SRigL paper reports 3.4× over dense and 2.5× over CSR for 3072→768 at batch 1
(4 threads, its own machine); those are the paper's numbers, not ours.

## Cold cache (weights streamed from DRAM), batch 1

{cold}

## Memory

Values plus indices of a 90 %-sparse condensed fp32 layer over the dense fp32 weight ({mem_text}):
fp32 values + int16 indices take 0.1 · 6/4 = 0.15 of the dense bytes, plus a little for the layout.

## bf16 and AMX: compare like for like

This CPU has AMX. At batch 256 bf16 dense `F.linear` ran {min(bf_range)}–{max(bf_range)}× faster than fp32
dense in this run, so fp32 condensed against fp32 dense is **not** the comparison a bf16 deployment
sees. The condensed kernel also runs in bf16; the last column compares bf16 with bf16:

{bf}

At batch 1 bf16 dense gains little (weights are read once per call either way), so the batch-1
condensed speedups hold in bf16 too (see the full table).

## 2:4 (N:M) layers next to SRigL's

A 2:4 layer is a constant fan-in layer with `k = in/2`, so `AccelerateCallback` condenses it with the
same kernel on CPU (2:4 semi-structured tensor cores need a CUDA GPU). At 50 % density it saves little:

{nm}

## GPU

GPU figures: unmeasured in this release (no GPU was available). `configs/benchmark_gpu.yaml` is the
sweep to run on one (adds batch 2048 and the 2:4 `semi_structured_bf16` method).

## Plots

Time per call (minimum, log scale) against sparsity for each method, in the style of the paper's
Figure 11; 2:4 layers are the square markers at 50 %. One figure per layer and thread count, one
panel per batch size; click a figure for full size.

{plots}

## Full table

Times in µs (minimum over samples); ratios are reference time / method time (> 1: faster).
"cond ×dense" and "cond ×CSR" are fp32 condensed against fp32 dense and fp32 CSR; "bf16 cond ×dense"
is bf16 condensed against bf16 dense; "byte ceiling" is the cold-cache batch-1 limit.

{markdown_table(summary)}"""
Path("docs/benchmarks.md").write_text(doc)
