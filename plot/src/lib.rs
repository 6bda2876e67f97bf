//! Pictures for people: line and dot charts with a title, axis titles, a legend and readable
//! text (plotters), segmentation overlays, and PNG encoding (the `png` crate).

mod chart;
mod font;
pub mod overlay;

pub use chart::{BLACK, BLUE, Corner, Figure, GREEN, GREY, Mark, ORANGE, RED};
pub use font::{FontError, font_path};

/// Why a picture could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The chart text has no usable font.
    #[error(transparent)]
    Font(#[from] FontError),
    /// Drawing failed (an empty range, a size of zero, …).
    #[error("drawing the chart {title:?}: {reason}")]
    Draw { title: String, reason: String },
    /// The pixel buffer does not match the picture size.
    #[error("an RGB picture of {width}x{height} needs {expected} bytes, got {got}")]
    Size { width: usize, height: usize, expected: usize, got: usize },
    /// PNG encoding failed.
    #[error("encoding PNG: {0}")]
    Png(#[from] png::EncodingError),
}

/// Encodes `rgb` (row-major, 3 bytes per pixel) as an 8-bit RGB PNG.
pub fn encode_rgb(width: usize, height: usize, rgb: &[u8]) -> Result<Vec<u8>, PlotError> {
    let expected = width * height * 3;
    if rgb.len() != expected || width == 0 || height == 0 {
        return Err(PlotError::Size { width, height, expected, got: rgb.len() });
    }
    let (w, h) = (u32::try_from(width), u32::try_from(height));
    let (Ok(w), Ok(h)) = (w, h) else {
        return Err(PlotError::Size { width, height, expected, got: rgb.len() });
    };
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header()?;
        writer.write_image_data(rgb)?;
        writer.finish()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a PNG back into (width, height, rgb) with the same crate's decoder.
    pub(crate) fn decode(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        assert_eq!(info.color_type, png::ColorType::Rgb);
        (info.width, info.height, buf)
    }

    #[test]
    fn encoded_pixels_decode_unchanged() {
        let rgb: Vec<u8> = (0..4 * 3 * 3).map(|i| (i * 7) as u8).collect();
        let (w, h, back) = decode(&encode_rgb(4, 3, &rgb).unwrap());
        assert_eq!((w, h), (4, 3));
        assert_eq!(back, rgb);
    }

    #[test]
    fn a_buffer_of_the_wrong_size_is_refused() {
        let err = encode_rgb(4, 3, &[0; 10]).unwrap_err();
        assert!(err.to_string().contains("needs 36 bytes, got 10"), "{err}");
        assert!(encode_rgb(0, 3, &[]).is_err());
    }
}
