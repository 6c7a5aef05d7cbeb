"""The real-time camera app and media I/O: capture, inference and display threads, picture sources
and sinks, and the `camera` and `video` commands.

Optional libraries (OpenCV, PyAV, mss, pyvirtualcam, PyYAML) are imported where they are used, never here.
"""
