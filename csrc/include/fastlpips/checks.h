// Named argument checks for the native ops (loud failures with the offending values).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#define FASTLPIPS_CHECK_FEATURES(x)                                                              \
  TORCH_CHECK((x).dim() == 4, "fastlpips: " #x " must be (N, C, H, W), got ", (x).sizes());     \
  TORCH_CHECK((x).is_floating_point(), "fastlpips: " #x " must be floating point, got ", (x).scalar_type())

#define FASTLPIPS_CHECK_SAME_SHAPE(a, b) \
  TORCH_CHECK((a).sizes() == (b).sizes(), "fastlpips: " #a " and " #b " differ in shape: ", (a).sizes(), " vs ", (b).sizes())

#define FASTLPIPS_CHECK_DEVICE(a, b) \
  TORCH_CHECK((a).device() == (b).device(), "fastlpips: " #a " is on ", (a).device(), " but " #b " on ", (b).device())
