"""The project's commands, apart from the library they call. Each is `python -m train.commands.<name>` with
`--help`; those that read a run config take `CONFIG.yaml [key.sub=value ...]` as train/main.py does, and every one
ends a user error with one `error: <where>: <what>` line (train/cli.py).

    predict     predict again from a recipe's trained folds (new files, a moved base model)
    score       probabilities and decisions for your own (query, target) rows, from a run or a recipe
    export      a run (or a recipe's fold) as a Hugging Face checkpoint or PEFT adapter, with a model card
    translate   English translations of the queries, for translation augmentation
    submission  check a submission against its inputs, compare two submissions
    folds       a file's CV folds: per-fold statistics and the assignment
    padding     the padding waste of padded and packed batches of a file
    benchmark   training speed against transformers + PEFT on the same examples
    demo        the whole method offline on the shipped demo data (./run.sh demo)
    demo_data   regenerate the demo data (configs/demo/)
"""
