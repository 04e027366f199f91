"""
Options, as nanoGPT's configurator.py reads them: Python config files that assign options, then
--key=value overrides. Here every key and value is checked against the defaults (train.py's
DEFAULTS) and the rules below, so that a typo or a bad value stops a run at once, with its reason.
"""
import ast
import difflib
import traceback

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def parse_config(argv, defaults):
    """Config files then --key=value overrides, checked against `defaults`. Returns the config and
    the set of keys given explicitly."""
    cfg, given = dict(defaults), set()
    accepts = {bool: lambda v: isinstance(v, bool),
               int: lambda v: type(v) is int or type(v) is float and v.is_integer(),
               float: lambda v: type(v) in (int, float),
               str: lambda v: isinstance(v, str),
               list: lambda v: isinstance(v, (list, tuple))}
    kinds = {bool: "True or False", int: "an integer", float: "a number", str: "a string",
             list: "a list"}

    def set_key(key, value, where):
        if key not in defaults:
            close = difflib.get_close_matches(key, defaults, n=1)
            raise SystemExit(f"error: unknown config key {key!r} ({where})"
                             + (f"; did you mean {close[0]}?" if close else "")
                             + " Valid keys:\n  " + ", ".join(sorted(defaults)))
        kind = type(defaults[key])
        if defaults[key] == "auto" and isinstance(value, bool):
            kind = bool  # 'auto' options also take True/False
        if not accepts[kind](value):
            raise SystemExit(f"error: {key}={value!r} ({where}): must be {kinds[kind]}")
        cfg[key] = kind(value) if kind in (int, float) else list(value) if kind is list else value
        given.add(key)

    for arg in argv:
        if arg.startswith("--"):
            key, eq, raw = arg[2:].partition("=")
            if not eq:
                raise SystemExit(f"error: expected --key=value, got {arg!r}")
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw  # a bare string
            if isinstance(defaults.get(key), str) and not isinstance(value, bool):
                value = raw  # a name or path, even one that looks like a number
            set_key(key, value, "command line")
        else:
            for key, value in read_config_file(arg).items():
                if (not key.startswith("_") and not callable(value)
                        and type(value).__name__ != "module"):
                    set_key(key, value, arg)
    return cfg, given


def read_config_file(path):
    """The variables a Python config file assigns; its errors name the file and line."""
    try:
        with open(path) as f:
            code = compile(f.read(), path, "exec")
    except FileNotFoundError:
        raise SystemExit(f"error: config file {path} not found") from None
    except OSError as e:
        raise SystemExit(f"error: config file {path}: {e.strerror.lower()}") from None
    except SyntaxError as e:
        raise SystemExit(f"error: {path} line {e.lineno}: {e.msg}") from None
    scope = {}
    try:
        exec(code, scope)
    except Exception as e:
        line = [frame.lineno for frame in traceback.extract_tb(e.__traceback__)
                if frame.filename == path][-1]
        raise SystemExit(f"error: {path} line {line}: {type(e).__name__}: {e}") from None
    return scope


def plain(value):
    """Numbers, strings, bools, None, and lists and dicts of them: what a checkpoint may hold"""
    if isinstance(value, (list, tuple)):
        return all(plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain(v) for k, v in value.items())
    return value is None or type(value) in (bool, int, float, str)


def validate(cfg):
    """Stop, with one line per bad value, on options that would crash late or quietly spoil a
    run."""
    rules = {key: (lambda v: v >= 1, "an integer >= 1") for key in (
        "batch_size", "block_size", "total_batch_size", "eval_interval", "eval_tokens",
        "log_interval", "n_layer", "n_head", "n_embd")}
    rules.update({key: (lambda v: v >= 0, "an integer >= 0") for key in (
        "max_iters", "warmup_iters", "ckpt_interval", "seed")})
    rules.update({key: (lambda v: v >= 0, ">= 0") for key in (
        "learning_rate", "min_lr", "weight_decay")})
    rules.update({key: (lambda v: 0 <= v < 1, "in [0, 1)") for key in (
        "dropout", "beta1", "beta2", "resegment", "embed_dropout")})
    rules["embed_dropout_anneal"] = (lambda v: 0 <= v <= 1, "in [0, 1] (0: constant)")
    rules["branch_lr_scale"] = (lambda v: v > 0, "> 0")
    rules.update({key: (lambda v: isinstance(v, str) and v != "", "a non-empty string") for key in (
        "data_dir", "out_dir", "tokenizer")})
    rules.update({
        "grad_clip": (lambda v: v >= 0, ">= 0 (0: no clipping)"),
        "dtype": (lambda v: v in ("auto", "bfloat16", "float32"),
                  "'auto', 'bfloat16' or 'float32' (float16 would need loss scaling, which "
                  "train.py does not do)"),
        "compile": (lambda v: v in (True, False, "auto"), "True, False or 'auto'"),
        "compile_mode": (lambda v: v in COMPILE_MODES,
                         ", ".join(map(repr, COMPILE_MODES[:-1])) + f" or {COMPILE_MODES[-1]!r}"),
        "attention": (lambda v: v in ("auto", "flex", "sdpa"), "'auto', 'flex' or 'sdpa'"),
        "pack": (lambda v: v in (True, False, "auto"), "True, False or 'auto'"),
        "own_kernel": (lambda v: v in (True, False, "auto"), "True, False or 'auto'"),
        "chunked_windows": (lambda v: v in (True, False), "True or False"),
        "device": (lambda v: v == "auto" or isinstance(v, str)
                   and v.split(":")[0] in ("cpu", "cuda", "mps"),
                   "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
        "streams": (lambda v: all(isinstance(s, dict) for s in v),
                    "a list of dicts (model.StreamConfig)"),
    })
    errors = [f"error: {key}={cfg[key]!r}: must be {what}"
              for key, (ok, what) in rules.items() if not ok(cfg[key])]
    errors += [f"error: {key}={value!r}: must be plain data (numbers, strings, lists, dicts)"
               for key, value in cfg.items() if not plain(value)]
    width, heads = cfg["n_embd"], cfg["n_head"]
    # rotary embeddings need even head sizes
    if width >= 1 and heads >= 1 and (width % heads or width // heads % 2):
        errors.append(f"error: n_embd={cfg['n_embd']}, n_head={cfg['n_head']}: n_embd must split "
                      f"into n_head heads of even size")
    if errors:
        raise SystemExit("\n".join(errors))
