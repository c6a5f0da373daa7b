"""litft's data pipeline: the ``data:`` section of a config (see :class:`litft.data.datamodule.LitFTDataModule`).

Flow (one module per step)::

    registry.py   dataset_info.json (LLaMA-Factory semantics) or file paths → DatasetEntry
    reader.py     data files (JSON array / JSON lines / CSV / text / Arrow / Parquet) → raw records, streamed
    formats.py    the format list (FORMATS): alpaca | sharegpt | openai | lima | dolly | text | trl → Conversation
                  (Preference / Feedback records for preference (ranking: true) / KTO (kto_tag) entries)
    records.py    an entry's records → conversations; num_samples sampling; mixing several datasets
    template_spec.py  what data.template may be: built-in, Jinja, declarative YAML → one Jinja chat template
    templates.py  the tokenizer's chat template (default) or data.template → input_ids + labels
    truncation.py conversations → rows of at most cutoff_len tokens (policy in its docstring)
    preference.py preference pairs → chosen/rejected rows, feedback examples → rows (same templates, exact masks)
    stats.py      the figures of a preparation (records, skipped, samples, tokens, truncated, dropped, ...)
    packing.py    best-fit decreasing packing, block-diagonal mask / varlen position_ids
    shared_prompt.py  preference pairs as one row each, the prompt once (data.share_prompt: a 4-D branch mask)
    pipeline.py   corpus-scale preparation on datasets: Arrow all the way, batched map with worker processes
    cache.py      fingerprinted Arrow cache, prepared on one rank, others wait (heartbeat + timeout)
    loader.py     resumable, sharded training loader with num_target_tokens
    datamodule.py LitFTDataModule (data.kind: sft | preference | feedback)

Masking: labels are -100 everywhere but the assistant turns; each assistant turn's content and its
end-of-turn text are trained: a declarative/built-in template's ``end_of_turn`` (``<|im_end|>\n``,
``</s>\n\n``, ``\n### End``), else the first special token (``<|im_end|>``, ``<|eot_id|>``, EOS); text a
Jinja template puts after that token (ChatML's newline) is not. With the tokenizer's own template, ``input_ids`` equal
``tokenizer.apply_chat_template(messages, tokenize=True)`` exactly.
"""
