"""One object per task (single-label, multi-label, NER): what differs between tasks, asked by the stages."""
