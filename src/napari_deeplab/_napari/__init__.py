"""The napari side of napari-deeplab: widgets, sample data. The only code that imports napari or Qt."""
