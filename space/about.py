"""The About tab's text (kept out of the layout code)."""

CITATION = """@inproceedings{he2025mergebench,
  title     = {MergeBench: A Benchmark for Merging Domain-Specialized LLMs},
  author    = {He, Yifei and Zeng, Siqi and Hu, Yuzheng and Yang, Rui and Zhang, Tong and Zhao, Han},
  booktitle = {Advances in Neural Information Processing Systems (Datasets and Benchmarks Track)},
  year      = {2025},
  eprint    = {2505.10833},
  archivePrefix = {arXiv}
}"""

ABOUT = f"""
## What MergeBench measures

*If I merge these domain experts with this method, what do I keep, what do I lose, and what does it cost?*
Each base model (Llama-3.2-3B, Llama-3.1-8B, Gemma-2-2B, Gemma-2-9B, each as pre-trained and instruction
tuned) is fine-tuned into five **domain experts** — instruction following, mathematics, multilingual
understanding, coding and safety — and into one **multi-task** model trained on all five domains at once.
Eight merging methods (Model Soup, Task Arithmetic, TIES, DARE, Consensus/TALL masks, Localize-and-Stitch,
RegMean, Fisher merging) combine the experts into one model, which is scored on every domain's tasks.

## How scores are normalised

* **Normalised score, per domain**: for each task of a domain, the merged model's score ÷ that domain's
  expert's score on the same task; the mean of those ratios within the domain. 1.0 = as good as the expert.
* **Normalised score, overall**: the mean of the per-domain numbers.
* **Forgetting**: on general tasks outside the five domains, merged ÷ base; the mean. 1.0 = nothing lost.
* **Multi-task gap**: the merged model's normalised score minus the multi-task model's (normalised by the
  same experts). Positive = merging beats training on everything at once.
* **Cost**: merge wall-clock plus validation wall-clock (the hyper-parameter search the paper counts;
  zero for Space submissions, whose parameters you chose). Peak memory is the merge's peak RSS.

A ratio needs both scores and a non-zero reference score; tasks that cannot be compared are left out,
never counted as 0. Raw task scores are shown with *Raw task scores*; results with a different
`max_samples`, refusal judge (the *Judge* column: the rule-based CPU default or the paper's WildGuard classifier)
or task version are not comparable.

**± and ≈.** Each task score is a mean over items and comes with its standard error. The ± shown with every
number is one standard error, propagated from the tasks' (first order, treating the model's and the
reference's scores as independent): a ratio m/e has variance σ_m²/e² + m²σ_e²/e⁴, a mean of n ratios the
root of the summed variances over n. A row compared with itself (an expert in its own domain) is exactly 1.
Two numbers are *within noise* (≈) when their 95 % intervals (± 1.96 standard errors) overlap; with a few
dozen items per task, many merges are.

## Submitting

Sign in, then either propose a merge (base, experts from the benchmark, method, parameters) or an already
merged model of a benchmark base (safetensors weights, standard architecture: no remote code is ever run).
Jobs run one at a time in this Space, or, when the Space dispatches them (`MERGEBENCH_DISPATCH=hf-jobs`), several
at once as Hugging Face Jobs on GPU; either way they survive restarts, and each pushes the merged model with its
card and the results to the results dataset, then appears on the leaderboard.

MergeBench here is an independent, Hugging Face Hub-native implementation, not the authors' code.

## Citation

```bibtex
{CITATION}
```
"""
