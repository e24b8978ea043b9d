"""python -m medqlora.export verify EXPORT_DIR: re-read every file of an export against its manifest."""
import sys

from medqlora.export.manifest import verify

if len(sys.argv) != 3 or sys.argv[1] != "verify":
    sys.exit("usage: python -m medqlora.export verify EXPORT_DIR (a folder or an fsspec URL)")
found = verify(sys.argv[2])
print("verified: every file matches manifest.json" if not found else "\n".join(found))
sys.exit(1 if found else 0)
