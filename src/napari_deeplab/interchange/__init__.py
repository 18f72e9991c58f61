"""Exchange with other tools' dataset formats (COCO), each verified by that tool's own code."""
