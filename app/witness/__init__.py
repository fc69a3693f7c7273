"""A transparency log witness (C2SP tlog-witness, tlog-cosignature): it cosigns a log's signed
checkpoint only when it is consistent with the latest one it cosigned for that log, which it
keeps on disk. `python -m app witness` runs it; logs ask it with app.ledger.witnessing."""
