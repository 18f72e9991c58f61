"""The DeepLabV3+ (ResNet50) architecture in Keras 3, and the layers of ours it is made of.

The architecture is the seed's (the Keras example "Multiclass semantic segmentation using
DeepLabV3+"), written so that pooling and upsampling follow the input: the same weights run
at any input size whose sides are multiples of :data:`OUTPUT_STRIDE`. Our models take RGB in
0..255 (the scaling to [-1, 1] the seed was trained with is the model's first layer) and
return one logit per class and pixel; they carry their class names and training input size
(:class:`ModelInfo`).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from ..cihp import CLASS_NAMES
from .cache import use_jax_compilation_cache
from .errors import ModelError

SEED_INPUT_SIZE = 512
"""Side of the square the seed was trained on; inputs are resized to it without keeping aspect."""

OUTPUT_STRIDE = 16
"""Input pixels per feature of the trunk's deepest layer used (``conv4_block6_2_relu``): input
sides must be multiples of it."""

HIGH_LEVEL_FEATURES = "conv4_block6_2_relu"
"""The trunk layer the atrous spatial pyramid pooling reads (output stride 16)."""
LOW_LEVEL_FEATURES = "conv2_block3_2_relu"
"""The trunk layer the decoder's skip connection reads (output stride 4)."""

ASPP_FILTERS = 256
"""Channels of each pyramid branch, of its projection and of the decoder's blocks."""
ASPP_DILATION_RATES = (6, 12, 18)
"""Dilation rates of the pyramid's 3 x 3 branches."""
ASPP_BRANCHES = 2 + len(ASPP_DILATION_RATES)
"""Branches the pyramid concatenates: the image pooling, the 1 x 1 and the dilated ones."""
LOW_LEVEL_FILTERS = 48
"""Channels the low-level features are projected to before the decoder's concatenation."""
DECODER_UPSAMPLING = 4
"""Factor of each of the two bilinear upsamplings: stride 16 -> 4 (the skip), 4 -> 1."""

RGB_SCALE = 1 / 127.5
"""The seed's input scaling, RGB in 0..255 -> [-1, 1]: ``x * RGB_SCALE + RGB_OFFSET``."""
RGB_OFFSET = -1.0


@keras.saving.register_keras_serializable(package="napari_deeplab")
class BroadcastToSpatial(layers.Layer):
    """Repeat a 1 x 1 feature over the spatial size of a reference feature map.

    The seed upsampled its image-pooling branch bilinearly from 1 x 1, which is this
    broadcast; doing it from the reference's shape keeps the model size-agnostic.
    """

    def call(self, inputs):
        pooled, reference = inputs
        return pooled * ops.ones_like(reference[..., :1])

    def compute_output_shape(self, input_shapes):
        pooled, reference = input_shapes
        return reference[:-1] + pooled[-1:]


@keras.saving.register_keras_serializable(package="napari_deeplab")
class BilinearUpsampling(layers.Layer):
    """Bilinear upsampling by an integer factor that, unlike ``UpSampling2D``, also runs on
    inputs whose spatial size is only known at run time (a retraced ``tf.function``)."""

    def __init__(self, factor: int, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, inputs):
        if keras.backend.backend() == "tensorflow":
            # keras.ops.image.resize validates the size in Python, which a symbolic size fails
            import tensorflow as tf

            resized = tf.image.resize(
                inputs, tf.shape(inputs)[1:3] * self.factor, method="bilinear"
            )
            return ops.cast(resized, inputs.dtype)  # tf.image.resize returns float32
        shape = ops.shape(inputs)  # static under JAX and PyTorch
        return ops.image.resize(
            inputs,
            (shape[1] * self.factor, shape[2] * self.factor),
            interpolation="bilinear",
            antialias=False,
        )

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        scaled = [None if side is None else side * self.factor for side in (height, width)]
        return (batch, *scaled, channels)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="napari_deeplab")
class ModelInfo(layers.Layer):
    """Identity on the logits that carries the class names and the input size into ``.keras`` files."""

    def __init__(self, class_names=CLASS_NAMES, input_size=SEED_INPUT_SIZE, **kwargs):
        super().__init__(**kwargs)
        self.class_names = tuple(class_names)
        self.input_size = int(input_size)

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "class_names": list(self.class_names),
            "input_size": self.input_size,
        }


def _conv_block(x, filters, kernel_size, name, dilation_rate=1, use_bias=False):
    x = layers.Conv2D(
        filters,
        kernel_size,
        dilation_rate=dilation_rate,
        padding="same",
        use_bias=use_bias,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def build_model(
    num_classes: int = len(CLASS_NAMES), class_names=None, input_size: int = SEED_INPUT_SIZE
) -> keras.Model:
    """Build DeepLabV3+ with a ResNet50 trunk and random weights.

    Parameters
    ----------
    num_classes : int
        Classes (logits per pixel); 20 for CIHP.
    class_names : sequence of str, optional
        One per class; default the CIHP names for 20 classes, else ``"class <i>"``.
    input_size : int
        The square side in pixels that :func:`napari_deeplab.inference.model_input` resizes
        photos to (the size the model was trained at).

    Returns
    -------
    keras.Model
        Maps ``(N, H, W, 3)`` float RGB in 0..255 to ``(N, H, W, num_classes)`` float32
        logits, for any H and W that are multiples of :data:`OUTPUT_STRIDE`. With 20 classes
        it has 11,857,236 parameters, as the seed.
    """
    use_jax_compilation_cache()
    if class_names is None:
        class_names = (
            CLASS_NAMES
            if num_classes == len(CLASS_NAMES)
            else [f"class {i}" for i in range(num_classes)]
        )
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    rgb = keras.Input(shape=(None, None, 3), name="rgb")
    scaled = layers.Rescaling(RGB_SCALE, offset=RGB_OFFSET, name="scale_to_unit_range")(rgb)
    trunk = keras.applications.ResNet50(weights=None, include_top=False, input_tensor=scaled)
    high = trunk.get_layer(HIGH_LEVEL_FEATURES).output
    low = trunk.get_layer(LOW_LEVEL_FEATURES).output

    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="aspp_image_pool")(high)
    pooled = _conv_block(pooled, ASPP_FILTERS, 1, "aspp_pool", use_bias=True)
    pooled = BroadcastToSpatial(name="aspp_pool_broadcast")([pooled, high])
    branches = [pooled, _conv_block(high, ASPP_FILTERS, 1, "aspp_1x1")]
    branches += [
        _conv_block(high, ASPP_FILTERS, 3, f"aspp_rate{rate}", dilation_rate=rate)
        for rate in ASPP_DILATION_RATES
    ]
    x = layers.Concatenate(name="aspp_concat")(branches)
    x = _conv_block(x, ASPP_FILTERS, 1, "aspp_project")

    x = BilinearUpsampling(DECODER_UPSAMPLING, name="decoder_upsample")(x)
    low = _conv_block(low, LOW_LEVEL_FILTERS, 1, "low_level")
    x = layers.Concatenate(name="decoder_concat")([x, low])
    x = _conv_block(x, ASPP_FILTERS, 3, "decoder_block1")
    x = _conv_block(x, ASPP_FILTERS, 3, "decoder_block2")
    # The seed upsampled the 256 features x4 and then applied the 1x1 logits conv; both are
    # linear, so conv-then-upsample is the same function with 13x less work at full size.
    logits = layers.Conv2D(num_classes, 1, padding="same", name="logits")(x)
    logits = BilinearUpsampling(DECODER_UPSAMPLING, name="output_upsample")(logits)
    logits = ModelInfo(class_names, input_size, name="model_info")(logits)
    return keras.Model(rgb, logits, name="deeplabv3plus_resnet50")


def model_info(model: keras.Model) -> ModelInfo:
    """The :class:`ModelInfo` layer of one of our models (class names, input size)."""
    try:
        return model.get_layer("model_info")
    except ValueError:
        raise ModelError(
            f"model {model.name!r} was not made by napari-deeplab "
            "(it has no class names); load it with napari_deeplab.model.load_model"
        ) from None
