"""Which keys of a fieldcrypt.toml docs/CONFIG.md documents: shared by
tools/check_stack.py (the docker stack's config) and tools/check_k8s.py (the
Kubernetes ConfigMaps' configs). fieldcrypt refuses unknown keys, so a key the
reference does not list is either a typo or an undocumented key."""

import re


def documented_config_keys(config_doc):
    """{section pattern: set of keys} from the headings (`[kms]`, `[[routes]]`,
    `[blind_index.domains.NAME]`) and the first cells of the tables in
    docs/CONFIG.md. A dotted key (`confluent.tags`) also documents its subtable."""
    sections, current = {}, None
    for line in config_doc.read_text().splitlines():
        m = re.match(r"^#+ `\[\[?([A-Za-z0-9_.]+)\]?\]`", line)
        if m:
            current = m.group(1)
            sections.setdefault(current, set())
        elif current and line.startswith("| `"):
            for key in re.findall(r"`([A-Za-z0-9_.]+)`", line.split("|")[1]):
                sections[current].update({key, key.split(".")[0]})
    return sections


def undocumented(cfg, sections):
    """What in the parsed config `cfg` the reference does not document, as
    (kind, path, section): ("table", "a.b", None) for a table with no section,
    ("key", "a.b", "a") for a key its section does not list, ("not-table", "x",
    None) for a top-level value that is not a table."""
    found = []

    def section_for(path):
        # blind_index.domains.email -> blind_index.domains.NAME, tags.PII -> tags.TAG
        for pattern in sections:
            pat = re.sub(r"\\\.[A-Z]+$", r"\\.[^.]+", re.escape(pattern))
            if re.fullmatch(pat, path):
                return pattern
        return None

    def walk(table, path):
        sec = section_for(path)
        if sec is None:
            if table and all(isinstance(v, dict) for v in table.values()):
                for key, value in table.items():  # e.g. blind_index.domains.<NAME>
                    walk(value, f"{path}.{key}")
            else:
                found.append(("table", path, None))
            return
        for key, value in table.items():
            if isinstance(value, dict) and key not in sections[sec]:
                walk(value, f"{path}.{key}")
            elif key not in sections[sec]:
                found.append(("key", f"{path}.{key}", sec))

    for key, value in cfg.items():
        for t in value if isinstance(value, list) else [value]:
            if isinstance(t, dict):
                walk(t, key)
            else:
                found.append(("not-table", key, None))
    return found
