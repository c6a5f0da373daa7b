"""Write the ESG extraction example's small Chinese dataset (alpaca records whose outputs are YAML).

Every company, figure and sentence comes from the templates below, written for litft: the companies are
fictional. The output is deterministic, so running this script again reproduces the committed files byte for byte:

    python scripts/make_esg_data.py            # writes configs/examples/esg_extraction{,_eval}.json
    python scripts/make_esg_data.py --check    # exits 1 if the committed files are stale

Each record: instruction (the task, in Chinese), input (one or two sentences of a fictional sustainability
report), output (YAML: 实体 entities, 属性 attributes with value/unit/year, 关系 relations).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import yaml

OUT_DIR = Path(__file__).resolve().parents[1] / "configs" / "examples"
SEED = 2024
INSTRUCTION = "从以下可持续发展报告片段中抽取ESG实体、属性和关系，以YAML格式输出。"

COMPANIES = [
    ("青川新能源股份有限公司", "能源"), ("远帆物流集团", "物流"), ("华岭水泥有限公司", "建材"),
    ("明澜食品股份有限公司", "食品"), ("云栖数据科技有限公司", "科技"), ("东湖纺织集团", "纺织"),
    ("北辰钢铁股份有限公司", "钢铁"), ("南屿航运有限公司", "航运"), ("嘉禾医药集团", "医药"),
    ("星河汽车股份有限公司", "汽车"),
]
# (metric, ESG pillar, unit, low, high, decimals)
METRICS = [
    ("温室气体排放总量", "环境", "万吨二氧化碳当量", 1, 300, 1),
    ("用水量", "环境", "万立方米", 5, 900, 1),
    ("可再生能源使用比例", "环境", "%", 3, 80, 1),
    ("废弃物回收率", "环境", "%", 20, 99, 1),
    ("员工人均培训时长", "社会", "小时", 8, 120, 0),
    ("女性员工占比", "社会", "%", 15, 60, 1),
    ("安全生产事故数", "社会", "起", 0, 12, 0),
    ("独立董事占比", "治理", "%", 25, 60, 1),
    ("反腐败培训覆盖率", "治理", "%", 60, 100, 1),
]
SENTENCES = [
    "{year}年，{company}{metric}为{value}{unit}。",
    "根据报告，{company}在{year}年的{metric}达到{value}{unit}。",
    "{company}披露，{year}年度{metric}为{value}{unit}，较上年有所变化。",
    "截至{year}年末，{company}的{metric}为{value}{unit}。",
]
TARGETS = {  # lower / higher than the current value
    "down": "计划在{target_year}年前将{metric}降至{target}{unit}",
    "up": "承诺到{target_year}年将{metric}提升至{target}{unit}",
}
PARTNERS = ["当地环保协会", "供应商联盟", "社区基金会", "行业协会"]


def _value(rng: random.Random, low: float, high: float, decimals: int) -> str:
    v = rng.uniform(low, high)
    return f"{v:.{decimals}f}" if decimals else str(int(round(v)))


def _number(text: str):
    return float(text) if "." in text else int(text)


def record(rng: random.Random) -> dict:
    company, industry = rng.choice(COMPANIES)
    year = rng.choice([2021, 2022, 2023])
    metrics = rng.sample(METRICS, rng.choice([1, 1, 2]))
    sentences, attributes = [], []
    relations = [{"主体": company, "关系": "所属行业", "客体": industry}]
    for metric, pillar, unit, low, high, dec in metrics:
        value = _value(rng, low, high, dec)
        sentences.append(rng.choice(SENTENCES).format(company=company, year=year, metric=metric, value=value, unit=unit))
        attributes.append({"实体": company, "指标": metric, "类别": pillar, "数值": _number(value), "单位": unit,
                           "年份": year})
        relations.append({"主体": company, "关系": "披露", "客体": metric})
    entities = [{"名称": company, "类型": "公司"}]
    if rng.random() < 0.4:
        metric, pillar, unit, low, high, dec = metrics[0]
        target_year = year + rng.choice([2, 5, 7])
        down = metric in ("温室气体排放总量", "用水量", "安全生产事故数")
        now = attributes[0]["数值"]
        goal = now * rng.uniform(0.5, 0.9) if down else min(high, now * rng.uniform(1.1, 1.5))
        target = f"{goal:.{dec}f}" if dec else str(int(goal))
        phrase, relation = TARGETS["down" if down else "up"], "设定目标"
        sentences.append(f"公司{phrase.format(target_year=target_year, metric=metric, target=target, unit=unit)}。")
        attributes.append({"实体": company, "指标": f"{metric}目标", "类别": pillar, "数值": _number(target),
                           "单位": unit, "年份": target_year})
        relations.append({"主体": company, "关系": relation, "客体": f"{metric}目标"})
    if rng.random() < 0.3:
        partner = rng.choice(PARTNERS)
        sentences.append(f"同年，{company}与{partner}开展合作。")
        entities.append({"名称": partner, "类型": "组织"})
        relations.append({"主体": company, "关系": "合作", "客体": partner})
    output = yaml.safe_dump({"实体": entities, "属性": attributes, "关系": relations}, allow_unicode=True,
                            sort_keys=False, default_flow_style=False)
    return {"instruction": INSTRUCTION, "input": "".join(sentences), "output": output.strip()}


def build() -> dict[str, str]:
    rng = random.Random(SEED)
    records, seen = [], set()
    while len(records) < 36:
        r = record(rng)
        if r["input"] not in seen:
            seen.add(r["input"])
            records.append(r)

    def dump(rows):
        return json.dumps(rows, ensure_ascii=False, indent=1) + "\n"

    return {"esg_extraction.json": dump(records[:30]), "esg_extraction_eval.json": dump(records[30:])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed files differ")
    args = parser.parse_args()
    stale = []
    for name, text in build().items():
        path = OUT_DIR / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"stale: {', '.join(stale)} (run python scripts/make_esg_data.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
