"""The middle layer: calibration of what the engines compute to the world they run in. INT8
engine calibration on a camera's own frames (``calibrate.int8``, with the engine benchmark that
compares it, ``calibrate.bench``) and ground-plane geometry for people per m²
(``calibrate.ground``, its config section ``calibrate.config``, drawn by ``calibrate.preview``;
stored in place by the one comment-keeping writer, ``engines.yamledit``).

May import: ``engines`` (and itself). Never ``pipeline``: the runtime passes what calibration
needs (cameras, model settings) in (``tests/test_layers.py`` enforces this).

Example::

    from calibrate.ground import GroundCalibration
    cal = GroundCalibration.from_config(cam.calibration, frame_size=(480, 640), camera="lobby")
"""
