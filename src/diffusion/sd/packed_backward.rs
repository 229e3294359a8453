//! The autodiff operation of a frozen base layer held packed (`layers::{Dense, Conv}` on a
//! `realfill quantize` folder, under LoRA learning: QLoRA). burn's own matrix product and
//! convolution keep their widened weight until the backward pass (and the convolution its input
//! too), ≈ 4.6 GB of f32 copies for SD-2's UNet and text encoder. These keep only the packed
//! weight's `Arc` and the input's shape, and widen the weight again in the backward pass to
//! compute the input's gradient. No weight gradient: the base is frozen.
//!
//! Only on the CPU's autodiff device (packed weights are widened once at load elsewhere,
//! `sd::weights`); `None` elsewhere, and the caller takes burn's own operations.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, CheckpointStrategy, NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::ops::{FloatTensorOps, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, GradientCheckpointingStrategy, TensorMetadata};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};

use super::packed::Packed;

/// The packed weight a backward step widens again (its `Debug` does not print the codes).
#[derive(Clone)]
struct Weight {
    packed: Arc<Packed>,
    dtype: DType,
}

impl std::fmt::Debug for Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "packed {}×{} as {:?}", self.packed.rows, self.packed.cols, self.dtype)
    }
}

impl Weight {
    fn widen<B: Backend, const D: usize>(&self, shape: [usize; D], device: &B::Device) -> FloatTensor<B> {
        B::float_from_data(self.packed.widen_data(shape, self.dtype), device)
    }
}

/// `x` [n, din] · Wᵀ, W the packed [dout, din].
#[derive(Debug)]
struct Matmul;

impl<B: Backend> Backward<B, 1> for Matmul {
    type State = Weight;

    fn backward(self, ops: Ops<Weight, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let w = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            // ∂x = ∂y · W, W [dout, din] as stored.
            let wide = w.widen::<B, 2>([w.packed.rows, w.packed.cols], &grad.device());
            B::float_matmul(grad, wide)
        });
    }
}

/// A convolution by the packed [cout, cin, k, k] kernel.
#[derive(Debug)]
struct Convolution;

#[derive(Clone, Debug)]
struct ConvState {
    weight: Weight,
    kernel: [usize; 4],
    stride: usize,
    pad: usize,
    /// The input's height and width (a strided convolution's gradient needs them back).
    size_in: [usize; 2],
}

impl<B: Backend> Backward<B, 1> for Convolution {
    type State = ConvState;

    fn backward(self, ops: Ops<ConvState, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let s = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            let wide = s.weight.widen::<B, 4>(s.kernel, &grad.device());
            let [_, _, ho, wo] = grad.shape().dims();
            // The rows and columns a strided convolution dropped at the end (burn's
            // `calculate_padding_out`, for square kernels without dilation).
            let (stride, pad, k) = (s.stride, s.pad, s.kernel[2]);
            let out = |size_in: usize, size_out: usize| {
                if stride <= 1 { 0 } else { size_in.saturating_sub((size_out - 1) * stride + k - 2 * pad) }
            };
            let padding_out = [out(s.size_in[0], ho), out(s.size_in[1], wo)];
            let options = ConvTransposeOptions::new([stride; 2], [pad; 2], padding_out, [1, 1], 1);
            B::conv_transpose2d(grad, wide, None, options)
        });
    }
}

/// Runs `op` on `x`'s primitive when `x` lives on the CPU's autodiff device.
fn on_autodiff_cpu<const D: usize, const E: usize>(
    x: Tensor<D>,
    op: impl FnOnce(FloatTensor<Autodiff<Flex>>) -> FloatTensor<Autodiff<Flex>>,
    op_balanced: impl FnOnce(
        FloatTensor<Autodiff<Flex, BalancedCheckpointing>>,
    ) -> FloatTensor<Autodiff<Flex, BalancedCheckpointing>>,
) -> Option<Tensor<E>> {
    match x.gradient_checkpointing_strategy()? {
        GradientCheckpointingStrategy::Disabled => {
            let p = x.try_into_primitive::<Autodiff<Flex, NoCheckpointing>>().ok()?;
            Some(Tensor::from_primitive::<Autodiff<Flex, NoCheckpointing>>(op(p)))
        }
        GradientCheckpointingStrategy::Balanced => {
            let p = x.try_into_primitive::<Autodiff<Flex, BalancedCheckpointing>>().ok()?;
            Some(Tensor::from_primitive::<Autodiff<Flex, BalancedCheckpointing>>(op_balanced(p)))
        }
    }
}

fn matmul<C: CheckpointStrategy>(x: FloatTensor<Autodiff<Flex, C>>, w: Weight) -> FloatTensor<Autodiff<Flex, C>> {
    let wide = w.widen::<Flex, 2>([w.packed.rows, w.packed.cols], &x.primitive().device());
    match Matmul.prepare::<C>([x.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let y = Flex::float_matmul(x.into_primitive(), Flex::float_transpose(wide));
            prep.finish(w, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(Flex::float_matmul(x.into_primitive(), Flex::float_transpose(wide))),
    }
}

fn conv<C: CheckpointStrategy>(x: FloatTensor<Autodiff<Flex, C>>, s: ConvState) -> FloatTensor<Autodiff<Flex, C>> {
    let wide = s.weight.widen::<Flex, 4>(s.kernel, &x.primitive().device());
    let options = ConvOptions::new([s.stride; 2], [s.pad; 2], [1, 1], 1);
    match Convolution.prepare::<C>([x.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let y = Flex::conv2d(x.into_primitive(), wide, None, options);
            prep.finish(s, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(Flex::conv2d(x.into_primitive(), wide, None, options)),
    }
}

/// `x` [n, din] times the packed [dout, din] weight transposed, on the CPU's autodiff device
/// (`None` elsewhere).
pub(super) fn linear(x: &Tensor<2>, packed: &Arc<Packed>) -> Option<Tensor<2>> {
    let w = Weight { packed: packed.clone(), dtype: x.dtype() };
    let w2 = w.clone();
    on_autodiff_cpu(x.clone(), |p| matmul::<NoCheckpointing>(p, w), |p| matmul::<BalancedCheckpointing>(p, w2))
}

/// `x` convolved (no bias) by the packed square kernel of `kernel` = [cout, cin, k, k], stride
/// and padding the same on both axes, on the CPU's autodiff device (`None` elsewhere).
pub(super) fn conv2d(
    x: &Tensor<4>,
    packed: &Arc<Packed>,
    kernel: [usize; 4],
    stride: usize,
    pad: usize,
) -> Option<Tensor<4>> {
    let [_, _, h, w] = x.dims();
    let weight = Weight { packed: packed.clone(), dtype: x.dtype() };
    let s = ConvState { weight, kernel, stride, pad, size_in: [h, w] };
    let s2 = s.clone();
    on_autodiff_cpu(x.clone(), |p| conv::<NoCheckpointing>(p, s), |p| conv::<BalancedCheckpointing>(p, s2))
}
