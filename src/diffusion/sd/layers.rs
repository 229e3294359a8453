//! The linear and convolution layers of Stable Diffusion's networks. A layer's weight is a
//! float tensor as read, or held packed (`packed::Packed`, from a `realfill quantize` folder)
//! and widened to the activations' float type for each call only, so that only the packed
//! form stays resident between calls. Widened weights are constants: on an autodiff device no
//! gradient reaches them (the frozen base under LoRA learning, QLoRA), and on the CPU's a packed
//! layer takes its own operation (`packed_backward`) that widens the weight again in the
//! backward pass instead of keeping it until then. Only on the CPU: on a GPU or a remote device
//! the weights are widened once at load (`sd::weights`), not sent each call.

use std::sync::Arc;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::module::{conv2d, linear};
use burn::tensor::ops::ConvOptions;

use super::packed::Packed;
use super::packed_backward;

/// `x · W + b` (PyTorch's `Linear(din, dout)`).
#[derive(Module, Debug)]
pub struct Dense {
    /// burn's layout [din, dout]; `None` while the weight is held packed.
    pub weight: Option<Param<Tensor<2>>>,
    pub bias: Option<Param<Tensor<1>>>,
    /// PyTorch's layout: `dout` rows of `din`.
    #[module(skip)]
    pub packed: Option<Arc<Packed>>,
    pub din: usize,
    pub dout: usize,
}

/// A square convolution, stride and padding the same on both axes.
#[derive(Module, Debug)]
pub struct Conv {
    /// [cout, cin, k, k]; `None` while the weight is held packed.
    pub weight: Option<Param<Tensor<4>>>,
    pub bias: Option<Param<Tensor<1>>>,
    /// `cout` rows of `cin·k·k`.
    #[module(skip)]
    pub packed: Option<Arc<Packed>>,
    pub cin: usize,
    pub cout: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

/// `p`'s values as a tensor of `shape` in `dtype` on `device`, widened straight into that type.
pub(super) fn widen<const D: usize>(p: &Packed, shape: [usize; D], dtype: DType, device: &Device) -> Tensor<D> {
    Tensor::from_data(p.widen_data(shape, dtype), (device, dtype))
}

/// A weight burn holds quantised itself (`quant::quantize_q8`) as `dtype` floats; others as they are.
fn float<const D: usize>(w: Tensor<D>, dtype: DType) -> Tensor<D> {
    if matches!(w.dtype(), DType::QFloat(_)) { w.dequantize().cast(dtype) } else { w }
}

impl Dense {
    pub fn new(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Dense {
        let [din, dout] = weight.dims();
        Dense { weight: Some(Param::from_tensor(weight)), bias: bias.map(Param::from_tensor), packed: None, din, dout }
    }

    pub fn from_packed(packed: Packed, bias: Option<Tensor<1>>) -> Dense {
        let (din, dout) = (packed.cols, packed.rows);
        Dense { weight: None, bias: bias.map(Param::from_tensor), packed: Some(Arc::new(packed)), din, dout }
    }

    /// The weight [din, dout] as `dtype` floats on `device` (widened now when held packed).
    pub fn weight(&self, dtype: DType, device: &Device) -> Tensor<2> {
        match (&self.weight, &self.packed) {
            (Some(w), _) => w.val(),
            (None, Some(p)) => widen(p, [self.dout, self.din], dtype, device).transpose(),
            (None, None) => unreachable!("a Dense layer holds its weight one way or the other"),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let bias = self.bias.as_ref().map(|b| b.val().cast(x.dtype()));
        let x = match (&self.weight, &self.packed) {
            (None, Some(p)) if x.is_autodiff() => {
                // On the CPU's autodiff device: an operation that widens the weight again in the
                // backward pass instead of keeping it (`packed_backward`).
                let dims = x.dims();
                let rows = dims[..D - 1].iter().product();
                let x = x.reshape([rows, self.din]);
                if let Some(y) = packed_backward::linear(&x, p) {
                    let mut out = dims;
                    out[D - 1] = self.dout;
                    let y = y.reshape(out);
                    return match bias {
                        Some(b) => y + b.unsqueeze(),
                        None => y,
                    };
                }
                x.reshape(dims)
            }
            _ => x,
        };
        // burn multiplies by a weight it holds quantised itself (Q8S) without widening it first.
        let w = self.weight(x.dtype(), &x.device());
        linear(x, w, bias)
    }
}

impl Conv {
    pub fn new(weight: Tensor<4>, bias: Option<Tensor<1>>, stride: usize, pad: usize) -> Conv {
        let [cout, cin, kernel, _] = weight.dims();
        Conv {
            weight: Some(Param::from_tensor(weight)),
            bias: bias.map(Param::from_tensor),
            packed: None,
            cin,
            cout,
            kernel,
            stride,
            pad,
        }
    }

    pub fn from_packed(
        packed: Packed,
        cin: usize,
        kernel: usize,
        bias: Option<Tensor<1>>,
        stride: usize,
        pad: usize,
    ) -> Conv {
        assert_eq!(packed.cols, cin * kernel * kernel, "a packed kernel's rows");
        let cout = packed.rows;
        Conv {
            weight: None,
            bias: bias.map(Param::from_tensor),
            packed: Some(Arc::new(packed)),
            cin,
            cout,
            kernel,
            stride,
            pad,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        // burn's CPU convolution takes float weights only: a Q8S one is widened for this call.
        let options = ConvOptions::new([self.stride; 2], [self.pad; 2], [1, 1], 1);
        let bias = self.bias.as_ref().map(|b| b.val().cast(x.dtype()));
        let shape = [self.cout, self.cin, self.kernel, self.kernel];
        let (w, x) = match (&self.weight, &self.packed) {
            (Some(w), _) => (float(w.val(), x.dtype()), x),
            // On the CPU's autodiff device: widened again in the backward pass, not kept.
            (None, Some(p)) => {
                if let Some(y) = packed_backward::conv2d(&x, p, shape, self.stride, self.pad) {
                    return match bias {
                        Some(b) => y + b.reshape([1, self.cout, 1, 1]),
                        None => y,
                    };
                }
                (widen(p, shape, x.dtype(), &x.device()), x)
            }
            (None, None) => unreachable!("a Conv layer holds its weight one way or the other"),
        };
        conv2d(x, w, bias, options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::sd::packed::Format;
    use crate::rng::Rng;

    fn values(t: Tensor<4>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
    }

    /// A packed layer computes what the same layer computes on its widened weight, in f32 and
    /// in f16, and a packed linear layer is the transposed PyTorch matrix.
    #[test]
    fn packed_layers_compute_with_their_widened_weights() {
        let device = Device::flex();
        let (cin, cout, k) = (6, 5, 3);
        let w: Vec<f32> = Rng::new(1).normals(cout * cin * k * k);
        let x = Tensor::<4>::from_data(TensorData::new(Rng::new(2).normals(2 * cin * 8 * 8), [2, cin, 8, 8]), &device);
        let bias = Tensor::<1>::from_data(TensorData::new(vec![0.5f32; cout], [cout]), &device);
        for format in [Format::Int8, Format::Nf4] {
            let p = Packed::quantize(&w, cout, cin * k * k, format, 64);
            let wide = Tensor::<4>::from_data(TensorData::new(p.widen(), [cout, cin, k, k]), &device);
            let plain = Conv::new(wide, Some(bias.clone()), 2, 1);
            let packed = Conv::from_packed(p.clone(), cin, k, Some(bias.clone()), 2, 1);
            assert_eq!(values(plain.forward(x.clone())), values(packed.forward(x.clone())));
            let half = packed.forward(x.clone().cast(DType::F16));
            assert_eq!(half.dtype(), DType::F16);
            let (a, b) = (values(plain.forward(x.clone())), values(half));
            assert!(a.iter().zip(&b).all(|(a, b)| (a - b).abs() < 2e-2 * a.abs().max(1.0)));

            let p = Packed::quantize(&w[..cout * 9], cout, 9, format, 64);
            let wide = Tensor::<2>::from_data(TensorData::new(p.widen(), [cout, 9]), &device).transpose();
            let x2 = Tensor::<3>::from_data(TensorData::new(Rng::new(3).normals(2 * 4 * 9), [2, 4, 9]), &device);
            let a = Dense::new(wide, None).forward(x2.clone()).into_data();
            let b = Dense::from_packed(p, None).forward(x2).into_data();
            assert_eq!(a.try_to_vec::<f32>().unwrap(), b.try_to_vec::<f32>().unwrap());
        }
    }

    fn grad_of<const D: usize>(x: Tensor<D>, f: impl Fn(Tensor<D>) -> Tensor<D>, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let x = x.require_grad();
        let y = f(x.clone());
        let r = Tensor::<D>::from_data(
            TensorData::new(Rng::new(seed).normals(y.shape().num_elements()), y.dims()),
            &y.device(),
        );
        let out = y.clone().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        let grads = (y * r).sum().backward();
        (out, x.grad(&grads).expect("x's gradient").into_data().convert::<f32>().try_into_vec::<f32>().unwrap())
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = a.iter().zip(b).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst <= 1e-5 * scale, "{what}: largest difference {worst} (largest value {scale})");
    }

    /// On the autodiff CPU device a packed layer takes its own operation (`packed_backward`:
    /// the weight widened again in the backward pass, not kept): its output and its input's
    /// gradient equal burn's on the widened weight held as a frozen float parameter, for a
    /// linear layer on a 3-D input and for convolutions with stride 1 and 2 (odd sizes, where
    /// the strided convolution drops a row and a column) and a 1×1 kernel.
    #[test]
    fn packed_layers_backward_like_the_widened_weight() {
        let device = Device::flex().autodiff();
        let (cin, cout) = (5, 7);
        for (k, stride, pad, side) in [(3, 1, 1, 9), (3, 2, 1, 9), (3, 2, 0, 8), (1, 1, 0, 6)] {
            let w: Vec<f32> = Rng::new(4).normals(cout * cin * k * k);
            let p = Packed::quantize(&w, cout, cin * k * k, Format::Nf4, 64);
            let wide = Tensor::<4>::from_data(TensorData::new(p.widen(), [cout, cin, k, k]), &device);
            let bias = Tensor::<1>::from_data(TensorData::new(Rng::new(5).normals(cout), [cout]), &device);
            let plain = Conv::new(wide, Some(bias.clone()), stride, pad).no_grad();
            let packed = Conv::from_packed(p, cin, k, Some(bias), stride, pad).no_grad();
            let x = Tensor::<4>::from_data(
                TensorData::new(Rng::new(6).normals(2 * cin * side * side), [2, cin, side, side]),
                &device,
            );
            let (ya, ga) = grad_of(x.clone(), |x| plain.forward(x), 7);
            let (yb, gb) = grad_of(x, |x| packed.forward(x), 7);
            close(&ya, &yb, &format!("conv {k}×{k} stride {stride} pad {pad}: output"));
            close(&ga, &gb, &format!("conv {k}×{k} stride {stride} pad {pad}: input gradient"));
        }
        let w: Vec<f32> = Rng::new(8).normals(cout * 70);
        let p = Packed::quantize(&w, cout, 70, Format::Int8, 64);
        let wide = Tensor::<2>::from_data(TensorData::new(p.widen(), [cout, 70]), &device).transpose();
        let bias = Tensor::<1>::from_data(TensorData::new(Rng::new(9).normals(cout), [cout]), &device);
        let plain = Dense::new(wide, Some(bias.clone())).no_grad();
        let packed = Dense::from_packed(p, Some(bias)).no_grad();
        let x = Tensor::<3>::from_data(TensorData::new(Rng::new(10).normals(2 * 3 * 70), [2, 3, 70]), &device);
        let (ya, ga) = grad_of(x.clone(), |x| plain.forward(x), 11);
        let (yb, gb) = grad_of(x, |x| packed.forward(x), 11);
        close(&ya, &yb, "linear: output");
        close(&ga, &gb, "linear: input gradient");
    }
}
