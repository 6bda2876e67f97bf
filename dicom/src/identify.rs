//! Which of the four sequences (T1, T1ce, T2, FLAIR) a series is, from its description, protocol
//! and sequence names, the contrast-agent tag and the timing tags, with the reason in words.

use gmmas_imaging::Modality;

/// What identification reads of a series (no patient identifiers).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeriesText {
    /// SeriesDescription (0008,103E).
    pub description: String,
    /// ProtocolName (0018,1030).
    pub protocol: String,
    /// SequenceName (0018,0024).
    pub sequence_name: String,
    /// ContrastBolusAgent (0018,0010); non-empty when contrast was given.
    pub contrast_agent: String,
    /// RepetitionTime (ms).
    pub tr: Option<f64>,
    /// EchoTime (ms).
    pub te: Option<f64>,
    /// InversionTime (ms).
    pub ti: Option<f64>,
    /// ImageType (0008,0008), values joined by `\`.
    pub image_type: String,
}

/// The sequence a series was identified as, or none, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Identified {
    pub sequence: Option<Modality>,
    pub reason: String,
}

/// Names of series that are none of the four (diffusion, perfusion, susceptibility, localizers,
/// derived maps): such a series is never taken, whatever else its name says.
const OTHER: &[&str] = &[
    "dwi",
    "adc",
    "trace",
    "diff",
    "diffusion",
    "dti",
    "tensor",
    "swi",
    "swan",
    "perf",
    "perfusion",
    "dsc",
    "dce",
    "asl",
    "pcasl",
    "localizer",
    "localiser",
    "scout",
    "survey",
    "loc",
    "mip",
    "minip",
    "fa",
    "t2star",
    "t2*",
    "gre",
    "hemo",
    "spectro",
    "svs",
    "csi",
    "bold",
    "fmri",
    "tof",
    "mra",
    "cbf",
    "cbv",
    "mtt",
];
const FLAIR: &[&str] = &["flair", "dark-fluid", "darkfluid", "dark_fluid", "tirm", "t2f", "t2-flair", "t2flair"];
const T1: &[&str] = &[
    "t1", "t1w", "t1n", "mprage", "mp-rage", "spgr", "fspgr", "bravo", "tfl", "tfe", "t1ce", "t1c", "t1gd", "t1post",
    "vibe",
];
const T2: &[&str] = &["t2", "t2w", "tse", "fse", "t2-tse", "haste", "space"];
const CONTRAST: &[&str] = &[
    "ce",
    "gd",
    "gad",
    "gado",
    "post",
    "postcontrast",
    "post-contrast",
    "+c",
    "c+",
    "contrast",
    "t1ce",
    "t1c",
    "t1gd",
    "t1post",
    "km",
    "mdc",
    "enhanced",
];
const PRE: &[&str] = &["pre", "precontrast", "pre-contrast", "nativ", "native", "t1n"];

/// Lower-case words of the series' names: split on whitespace, `_`, `/`, `(`, `)`, `,`, `.`
/// (keeping `+`, `-` and `*`, which carry meaning in "+C" or "T2*").
fn words(t: &SeriesText) -> Vec<String> {
    let text = format!("{} {} {}", t.description, t.protocol, t.sequence_name).to_ascii_lowercase();
    let mut out = Vec::new();
    for w in text.split(|c: char| c.is_whitespace() || "_/(),.;:".contains(c)).filter(|w| !w.is_empty()) {
        out.push(w.to_string());
        // "t1+c", "t1-gd": also the parts either side of a joiner.
        for part in w.split(['+', '-']).filter(|p| !p.is_empty() && *p != w) {
            out.push(part.to_string());
        }
        if let Some(rest) = w.strip_prefix("t1").filter(|r| r.starts_with('+')) {
            out.push(rest.to_string());
        }
    }
    out
}

fn any(words: &[String], set: &[&str]) -> Option<String> {
    words.iter().find(|w| set.contains(&w.as_str())).cloned()
}

/// Identifies one series. Names decide first; timing decides when the names say nothing.
pub fn identify(t: &SeriesText) -> Identified {
    let w = words(t);
    let found = |sequence, reason: String| Identified { sequence: Some(sequence), reason };
    if let Some(x) = any(&w, OTHER) {
        return Identified { sequence: None, reason: format!("named \"{x}\": not one of T1, T1ce, T2, FLAIR") };
    }
    let image_type = t.image_type.to_ascii_uppercase();
    if image_type.contains("LOCALIZER") {
        return Identified { sequence: None, reason: "ImageType says LOCALIZER".into() };
    }
    if let Some(x) = any(&w, FLAIR) {
        return found(Modality::Flair, format!("named \"{x}\""));
    }
    let contrast_tag = !t.contrast_agent.trim().is_empty();
    let t1_contrast = |how: String| {
        if let Some(x) = any(&w, PRE) {
            return found(Modality::T1, format!("{how}, marked \"{x}\" (before contrast)"));
        }
        if let Some(x) = any(&w, CONTRAST) {
            return found(Modality::T1ce, format!("{how}, with contrast (named \"{x}\")"));
        }
        if contrast_tag {
            return found(Modality::T1ce, format!("{how}, with contrast (ContrastBolusAgent is set)"));
        }
        found(Modality::T1, format!("{how}, no contrast named or tagged"))
    };
    if let Some(x) = any(&w, T1) {
        return t1_contrast(format!("named \"{x}\""));
    }
    if let Some(x) = any(&w, T2) {
        return found(Modality::T2, format!("named \"{x}\""));
    }
    // Names say nothing: spin-echo timing rules (ms).
    match (t.tr, t.te, t.ti) {
        (Some(tr), Some(te), Some(ti)) if ti >= 1500.0 && te >= 70.0 => found(
            Modality::Flair,
            format!("timing TR {tr} / TE {te} / TI {ti} ms (fluid-attenuated inversion recovery)"),
        ),
        (Some(tr), Some(te), _) if tr >= 2000.0 && te >= 70.0 => {
            found(Modality::T2, format!("timing TR {tr} / TE {te} ms (long TR, long TE)"))
        }
        (Some(tr), Some(te), _) if tr < 1000.0 && te < 30.0 => {
            t1_contrast(format!("timing TR {tr} / TE {te} ms (short TR, short TE)"))
        }
        (Some(tr), Some(te), Some(ti)) if (600.0..=1300.0).contains(&ti) && te < 10.0 => {
            t1_contrast(format!("timing TR {tr} / TE {te} / TI {ti} ms (inversion-prepared gradient echo)"))
        }
        _ => Identified {
            sequence: None,
            reason: "neither the names nor the timing tags say which sequence this is (set it explicitly)".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(description: &str) -> SeriesText {
        SeriesText { description: description.into(), ..SeriesText::default() }
    }

    fn seq(t: &SeriesText) -> Option<Modality> {
        identify(t).sequence
    }

    #[test]
    fn common_scanner_names() {
        assert_eq!(seq(&named("t1_mprage_sag_p2_iso")), Some(Modality::T1));
        assert_eq!(seq(&named("T1 MPRAGE POST GD")), Some(Modality::T1ce));
        assert_eq!(seq(&named("Ax T1+C")), Some(Modality::T1ce));
        assert_eq!(seq(&named("AX T1 PRE")), Some(Modality::T1));
        assert_eq!(seq(&named("t2_tse_tra")), Some(Modality::T2));
        assert_eq!(seq(&named("t2_tirm_tra_dark-fluid")), Some(Modality::Flair));
        assert_eq!(seq(&named("AX T2 FLAIR")), Some(Modality::Flair));
        assert_eq!(seq(&named("3D FLAIR SAG")), Some(Modality::Flair));
        assert_eq!(seq(&named("ep2d_diff_3scan_trace")), None);
        assert_eq!(seq(&named("AX T2* GRE")), None);
        assert_eq!(seq(&named("localizer")), None);
        assert_eq!(seq(&named("ADC")), None);
    }

    #[test]
    fn contrast_tag_and_timing_decide_when_names_do_not() {
        let mut t = named("AX 3D BRAVO");
        assert_eq!(seq(&t), Some(Modality::T1));
        t.contrast_agent = "GADOVIST 7.5ml".into();
        let id = identify(&t);
        assert_eq!(id.sequence, Some(Modality::T1ce));
        assert!(id.reason.contains("ContrastBolusAgent"), "{}", id.reason);

        let timed = |tr, te, ti| SeriesText {
            description: "series 4".into(),
            tr: Some(tr),
            te: Some(te),
            ti,
            ..SeriesText::default()
        };
        assert_eq!(seq(&timed(9000.0, 120.0, Some(2500.0))), Some(Modality::Flair));
        assert_eq!(seq(&timed(4000.0, 100.0, None)), Some(Modality::T2));
        assert_eq!(seq(&timed(500.0, 12.0, None)), Some(Modality::T1));
        let unknown = identify(&SeriesText { description: "series 4".into(), ..SeriesText::default() });
        assert_eq!(unknown.sequence, None);
        assert!(unknown.reason.contains("explicitly"));
    }

    #[test]
    fn localizer_image_type_is_never_taken() {
        let t = SeriesText {
            description: "T1 3-plane".into(),
            image_type: "ORIGINAL\\PRIMARY\\LOCALIZER".into(),
            ..SeriesText::default()
        };
        assert_eq!(seq(&t), None);
    }
}
