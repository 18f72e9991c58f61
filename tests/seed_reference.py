"""The seed model exactly as the 2021 Keras example built and saved it, for tests and benchmarks.

Needs ``tf_keras`` (Keras 2), which the ``test`` extra installs. Nothing in the product
uses this module: it exists to make Keras-2 SavedModels in the seed's format without the
network, and to time the seed's own inference as the baseline of ``benchmarks/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SEED_IMAGE_SIZE = 512


def build_seed_model(image_size: int = SEED_IMAGE_SIZE, num_classes: int = 20, seed: int = 0):
    """Return the 2021 example's DeepLabV3+ as a ``tf_keras`` model with random weights.

    Batch-norm moving statistics and the BN scale/offset are randomised too (not left at
    0/1), so that a conversion that maps a weight to the wrong place changes the logits.
    """
    import tensorflow as tf
    import tf_keras as keras
    from tf_keras import layers

    # Seeds Python's and NumPy's generators too: tf_keras draws the seed of an unseeded
    # initializer from Python's `random`, so without it the "seeded" model changed with the
    # process and with the tests run before it (one draw labelled a whole photo as class 18).
    keras.utils.set_random_seed(seed)

    def convolution_block(
        block_input, num_filters=256, kernel_size=3, dilation_rate=1, padding="same", use_bias=False
    ):
        x = layers.Conv2D(
            num_filters,
            kernel_size=kernel_size,
            dilation_rate=dilation_rate,
            padding="same",
            use_bias=use_bias,
            kernel_initializer=keras.initializers.HeNormal(),
        )(block_input)
        x = layers.BatchNormalization()(x)
        return tf.nn.relu(x)

    def dilated_spatial_pyramid_pooling(dspp_input):
        dims = dspp_input.shape
        x = layers.AveragePooling2D(pool_size=(dims[-3], dims[-2]))(dspp_input)
        x = convolution_block(x, kernel_size=1, use_bias=True)
        out_pool = layers.UpSampling2D(
            size=(dims[-3] // x.shape[1], dims[-2] // x.shape[2]), interpolation="bilinear"
        )(x)
        out_1 = convolution_block(dspp_input, kernel_size=1, dilation_rate=1)
        out_6 = convolution_block(dspp_input, kernel_size=3, dilation_rate=6)
        out_12 = convolution_block(dspp_input, kernel_size=3, dilation_rate=12)
        out_18 = convolution_block(dspp_input, kernel_size=3, dilation_rate=18)
        x = layers.Concatenate(axis=-1)([out_pool, out_1, out_6, out_12, out_18])
        return convolution_block(x, kernel_size=1)

    model_input = keras.Input(shape=(image_size, image_size, 3))
    resnet50 = keras.applications.ResNet50(
        weights=None, include_top=False, input_tensor=model_input
    )
    x = resnet50.get_layer("conv4_block6_2_relu").output
    x = dilated_spatial_pyramid_pooling(x)
    input_a = layers.UpSampling2D(
        size=(image_size // 4 // x.shape[1], image_size // 4 // x.shape[2]),
        interpolation="bilinear",
    )(x)
    input_b = resnet50.get_layer("conv2_block3_2_relu").output
    input_b = convolution_block(input_b, num_filters=48, kernel_size=1)
    x = layers.Concatenate(axis=-1)([input_a, input_b])
    x = convolution_block(x)
    x = convolution_block(x)
    x = layers.UpSampling2D(
        size=(image_size // x.shape[1], image_size // x.shape[2]), interpolation="bilinear"
    )(x)
    model_output = layers.Conv2D(num_classes, kernel_size=(1, 1), padding="same")(x)
    model = keras.Model(inputs=model_input, outputs=model_output)

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                    rng.normal(0.0, 0.1, beta.shape).astype("float32"),
                    rng.normal(0.0, 0.1, mean.shape).astype("float32"),
                    rng.uniform(0.5, 2.0, var.shape).astype("float32"),
                ]
            )
        elif isinstance(layer, layers.Conv2D) and layer.use_bias:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0.0, 0.1, bias.shape).astype("float32")])
    return model


def save_seed_checkpoint(folder: str | Path, seed: int = 0) -> Path:
    """Build the seed model with random weights and save it as a Keras-2 SavedModel folder."""
    folder = Path(folder)
    model = build_seed_model(seed=seed)
    model.save(str(folder), save_format="tf")
    return folder


def load_seed_checkpoint(folder: str | Path):
    """Load a seed-format SavedModel with Keras 2, as the seed's own users do."""
    import tf_keras as keras

    return keras.models.load_model(str(folder), compile=False)


def seed_reference_predict(model, image: np.ndarray) -> np.ndarray:
    """The seed's own inference: resize to 512x512, scale to [-1, 1], ``predict``, argmax,
    labels resized back to the photo's size with nearest neighbour.

    ``image``: H x W x 3 uint8 RGB. Returns H x W uint8 labels.
    """
    import tensorflow as tf

    height, width = image.shape[:2]
    x = tf.image.resize(image, [SEED_IMAGE_SIZE, SEED_IMAGE_SIZE]) / 127.5 - 1
    logits = model.predict(x[None], verbose=0)[0]
    labels = np.argmax(logits, axis=-1).astype(np.uint8)
    labels = tf.image.resize(labels[..., None], [height, width], method="nearest")
    return labels.numpy()[..., 0]
