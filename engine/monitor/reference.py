"""`scorewire reference`: a seeded uniform sample of training rows as a drift reference,
optionally with the model's outputs on those rows (for prediction drift, `monitor.outputs`),
and the true labels (`--label COLUMN`, kept as `label`: a [models.performance] reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.errors import UsageError

CHUNK_ROWS = 65_536  # rows per onnxruntime run when scoring the sample


def read_table(source: Path) -> pa.Table:
    """A Parquet file, or a CSV file with a header row (by its suffix: .csv, .tsv)."""
    if not source.is_file():
        raise UsageError(f"--from {source}: no such file")
    suffix = source.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            import pyarrow.csv as pacsv

            return pacsv.read_csv(source, parse_options=pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ","))
        return pq.read_table(source)
    except (pa.ArrowInvalid, OSError) as exc:
        kind = "CSV" if suffix in (".csv", ".tsv") else "Parquet"
        hint = "" if kind == "CSV" else " (a CSV file needs a .csv or .tsv suffix)"
        raise UsageError(f"--from {source}: not a readable {kind} file{hint}: {str(exc).splitlines()[0]}") from None


def score_outputs(table: pa.Table, model_path: Path, outputs: list[str], input_name: str | None = None,
                  features: list[str] | None = None, exclude: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The columns `outputs` names ("name" of a [rows] output, "name:column" of a [rows, k]
    one), computed by running the model (CPU) on the table's feature columns."""
    import onnxruntime as ort

    if not model_path.is_file():
        raise UsageError(f"--model {model_path}: no such file")
    # One thread, as the server runs a model by default (models[].intra_op_threads = 1): with
    # more, a tree ensemble sums in another order, its outputs differ in the last bit, and a
    # reference of tied values (probability 1.0 as 0.9999996 here, 0.99999934 live) drifts at
    # once from live traffic that has not changed (KS D 0.28 on a random forest's rows).
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise UsageError(f"--model {model_path}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from None
    inputs = {i.name: i for i in session.get_inputs()}
    name = input_name or next(iter(inputs))
    if name not in inputs:
        raise UsageError(f"--input {name}: the model's inputs are {list(inputs)}")
    named = features is not None
    if features is None:
        features = [f.name for f in table.schema if (pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
                    or pa.types.is_boolean(f.type)) and f.name not in exclude]
    missing = [f for f in features if f not in table.column_names]
    if missing:
        raise UsageError(f"--features: {missing[:5]} not in the data (it has {table.column_names[:8]}...)")
    shape = inputs[name].shape
    width = shape[1] if len(shape) == 2 else 1
    if isinstance(width, int) and width != len(features):
        raise UsageError(f"the model's input '{name}' takes {width} columns, the data gives {len(features)} "
                         f"({'--features' if named else 'its numeric columns'}); name them with --features")
    dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32}.get(inputs[name].type)
    if dtype is None:
        raise UsageError(f"the model's input '{name}' has type {inputs[name].type}; reference scoring takes "
                         "float, double, int32 or int64 inputs")
    x = np.column_stack([table.column(f).to_numpy(zero_copy_only=False) for f in features]).astype(dtype)
    if len(shape) == 1:
        x = x[:, 0]
    names = {o.name for o in session.get_outputs()}
    wanted = []
    for entry in outputs:
        out, _, col = entry.partition(":")
        if out not in names:
            raise UsageError(f"--outputs {entry}: the model has no output '{out}' (it has {sorted(names)})")
        wanted.append((entry, out, int(col) if col else None))
    runs = [session.run(sorted({o for _, o, _ in wanted}), {name: x[i:i + CHUNK_ROWS]})
            for i in range(0, len(x), CHUNK_ROWS)]
    order = sorted({o for _, o, _ in wanted})
    columns = {}
    for entry, out, col in wanted:
        values = np.concatenate([r[order.index(out)] for r in runs])
        if col is None:
            if values.ndim != 1:
                raise UsageError(f"--outputs {entry}: output '{out}' has {values.shape[1]} columns; "
                                 f"name one as '{out}:COLUMN'")
            columns[entry] = values
        else:
            if values.ndim != 2 or not 0 <= col < values.shape[1]:
                raise UsageError(f"--outputs {entry}: output '{out}' has shape {list(values.shape)}; "
                                 f"'{out}:COLUMN' needs a [rows, k] output and COLUMN below k")
            columns[entry] = values[:, col]
    return columns


def make_reference(source: Path, out: Path, sample: int, seed: int = 0, model: Path | None = None,
                   outputs: list[str] | None = None, input_name: str | None = None,
                   features: list[str] | None = None, label: str | None = None) -> int:
    """Write `sample` rows of `source` (all of them if fewer) to `out`, with the model's
    `outputs` on them when given, and the ground truth `label` column kept as "label" (a
    [models.performance] reference); returns the row count."""
    if sample <= 0:
        raise UsageError("--sample must be positive")
    if label is not None and "label" in (outputs or []):
        raise UsageError("--outputs label: the model's output 'label' would overwrite the true labels (--label); "
                         "leave it out (the performance reference needs the score, e.g. probabilities:1)")
    if bool(model) != bool(outputs):
        raise UsageError("--model and --outputs go together: the outputs are computed by scoring the rows")
    table = read_table(source)
    if label is not None and label not in table.column_names:
        raise UsageError(f"--label {label}: no such column (the data has {table.column_names[:8]}...)")
    if table.num_rows > sample:
        rows = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=sample, replace=False))
        table = table.take(rows)
    if features is not None:
        missing = [f for f in features if f not in table.column_names]
        if missing:
            raise UsageError(f"--features: {missing[:5]} not in the data (it has {table.column_names[:8]}...)")
    if model is not None:
        for name, values in score_outputs(table, model, outputs, input_name, features, (label,) if label else ()).items():
            if name in table.column_names:
                table = table.drop_columns([name])
            table = table.append_column(name, pa.array(values))
    if features is not None:  # the feature columns in the order given, then the outputs (and the label)
        table = table.select(features + [c for c in (outputs or []) if c not in features]
                             + ([label] if label and label not in features else []))
    if label is not None and label != "label":
        if "label" in table.column_names:
            table = table.drop_columns(["label"])
        table = table.rename_columns(["label" if c == label else c for c in table.column_names])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)
    return table.num_rows
