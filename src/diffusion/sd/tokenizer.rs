//! CLIP's byte-level BPE tokenizer (transformers' `CLIPTokenizer`) from `tokenizer/vocab.json`
//! and `merges.txt`: lower-cased, whitespace-normalised text split by CLIP's pattern, each piece
//! mapped byte-by-byte to printable characters, merged by rank, `</w>` marking a word's end;
//! then `<|startoftext|>` … `<|endoftext|>`, truncated and padded to the model's length.
//! (A hand-written 150 lines instead of the `tokenizers` crate: it needs nothing new to build.)

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::config::read_json;
use crate::error::{Error, Result};

/// Characters of one piece merged as a whole; a longer piece (no real word is) is merged in
/// chunks of this many, so that merging costs at most this squared per chunk whatever the
/// prompt or the merges.
const MAX_WORD: usize = 256;

pub struct Tokenizer {
    vocab: HashMap<String, i64>,
    /// Merge ranks by first symbol, then second (looked up without building a key).
    ranks: HashMap<String, HashMap<String, usize>>,
    byte_chars: [char; 256],
    pattern: regex::Regex,
    pub bos: i64,
    pub eos: i64,
    pub pad: i64,
    pub max_length: usize,
    /// Added tokens (the special ones, SD-2's "!" pad among them): matched in the raw text
    /// before anything else and never split, as transformers does. Longest first.
    added: Vec<(String, i64)>,
}

/// GPT-2's reversible map from bytes to printable characters.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut out = ['\0'; 256];
    for (b, c) in printable.iter().zip(chars) {
        out[*b as usize] = char::from_u32(c).expect("valid");
    }
    out
}

/// A special token as tokenizer configs write it: a string or `{"content": …}`.
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// The smallest and largest id it can emit (every vocabulary and added token's).
    pub fn id_range(&self) -> (i64, i64) {
        let ids =
            self.vocab.values().chain(self.added.iter().map(|(_, id)| id)).chain([&self.bos, &self.eos, &self.pad]);
        ids.fold((i64::MAX, i64::MIN), |(lo, hi), &id| (lo.min(id), hi.max(id)))
    }

    pub fn load(dir: &Path) -> Result<Tokenizer> {
        let vocab_path = dir.join("vocab.json");
        let vocab: HashMap<String, i64> = read_json(&vocab_path)?;
        let merges_path = dir.join("merges.txt");
        if crate::input_file::absent(&merges_path) {
            return Err(Error::input(&merges_path, "missing"));
        }
        let merges = crate::input_file::read_text(&merges_path, crate::input_file::CONFIG)?;
        // The first line is a version header; CLIP reads at most 49152 − 256 − 2 merges.
        let mut ranks: HashMap<String, HashMap<String, usize>> = HashMap::new();
        for (i, line) in merges.trim().lines().skip(1).take(49152 - 256 - 2).enumerate() {
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => {
                    // A repeated merge takes its last rank, as transformers' dict of merges does.
                    ranks.entry(a.to_string()).or_default().insert(b.to_string(), i);
                }
                _ => return Err(Error::input(&merges_path, format!("line {}: not a merge (`a b`)", i + 2))),
            }
        }
        // Special tokens and the length from the configs transformers writes (both optional).
        let mut special: HashMap<String, Value> = HashMap::new();
        for f in ["tokenizer_config.json", "special_tokens_map.json"] {
            let p = dir.join(f);
            if !crate::input_file::absent(&p) {
                let v: HashMap<String, Value> = read_json(&p)?;
                special.extend(v);
            }
        }
        let name =
            |key: &str, default: &str| special.get(key).and_then(token_text).unwrap_or_else(|| default.to_string());
        let id = |tok: String| {
            vocab.get(&tok).copied().ok_or_else(|| Error::input(&vocab_path, format!("has no token {tok:?}")))
        };
        let bos = id(name("bos_token", "<|startoftext|>"))?;
        let eos = id(name("eos_token", "<|endoftext|>"))?;
        let pad = id(name("pad_token", "<|endoftext|>"))?;
        let mut added: Vec<(String, i64)> = Vec::new();
        if let Some(Value::Object(dec)) = special.get("added_tokens_decoder") {
            for (id, v) in dec {
                if let (Ok(id), Some(t)) = (id.parse::<i64>(), token_text(v)) {
                    added.push((t, id));
                }
            }
        }
        for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
            if let Some(t) = special.get(key).and_then(token_text)
                && let Some(&id) = vocab.get(&t)
                && !added.iter().any(|(a, _)| *a == t)
            {
                added.push((t, id));
            }
        }
        added.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        let max_length = special
            .get("model_max_length")
            .and_then(|v| v.as_f64())
            .filter(|&m| m > 2.0 && m < 100_000.0)
            .map_or(77, |m| m as usize);
        let pattern = regex::Regex::new(
            r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
        )
        .expect("valid pattern");
        Ok(Tokenizer { vocab, ranks, byte_chars: bytes_to_unicode(), pattern, bos, eos, pad, max_length, added })
    }

    fn rank(&self, a: &str, b: &str) -> Option<usize> {
        self.ranks.get(a)?.get(b).copied()
    }

    /// BPE of one pre-tokenised piece (already mapped to byte characters); `end`: the piece
    /// ends a word (its last symbol gets `</w>`).
    fn bpe(&self, chars: &[char], end: bool) -> Vec<String> {
        let mut word: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        if end && let Some(last) = word.last_mut() {
            last.push_str("</w>");
        }
        while word.len() > 1 {
            let best = (0..word.len() - 1).filter_map(|i| self.rank(&word[i], &word[i + 1]).map(|r| (r, i))).min();
            let Some((_, i0)) = best else { break };
            let (a, b) = (word[i0].clone(), word[i0 + 1].clone());
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == a && word[i + 1] == b {
                    merged.push(format!("{a}{b}"));
                    i += 2;
                } else {
                    merged.push(std::mem::take(&mut word[i]));
                    i += 1;
                }
            }
            word = merged;
        }
        word
    }

    /// Token ids of `text` without the start/end tokens.
    pub fn tokens(&self, text: &str) -> Vec<i64> {
        self.tokens_up_to(text, usize::MAX)
    }

    /// The first `limit` token ids of `text` (start and end tokens not counted): the work
    /// stops there, so a prompt of any length costs what the text encoder can use.
    fn tokens_up_to(&self, text: &str, limit: usize) -> Vec<i64> {
        let mut out = Vec::new();
        let mut rest = text;
        let mut i = 0;
        while i < rest.len() && out.len() < limit {
            if let Some((t, id)) = self.added.iter().find(|(t, _)| rest[i..].starts_with(t.as_str())) {
                self.plain_tokens(&rest[..i], limit, &mut out);
                out.push(*id);
                rest = &rest[i + t.len()..];
                i = 0;
            } else {
                i += rest[i..].chars().next().map_or(1, char::len_utf8);
            }
        }
        self.plain_tokens(rest, limit, &mut out);
        out.truncate(limit);
        out
    }

    /// Appends the tokens of `text` (no added tokens in it) to `out`, up to `limit` in all.
    fn plain_tokens(&self, text: &str, limit: usize, out: &mut Vec<i64>) {
        if out.len() >= limit {
            return;
        }
        // transformers without ftfy: BasicTokenizer (whitespace-normalised, lower-cased, CJK
        // characters spaced out, no accent stripping or punctuation split).
        let mut clean = String::with_capacity(text.len());
        for c in text.chars() {
            if c == '\0' || c == '\u{fffd}' || (c.is_control() && !c.is_whitespace()) {
                continue;
            }
            if is_cjk(c) {
                clean.push(' ');
                clean.push(c);
                clean.push(' ');
            } else {
                clean.push(c);
            }
        }
        let text = clean.split_whitespace().map(|w| w.to_lowercase()).collect::<Vec<_>>().join(" ");
        let unk = self.eos;
        for m in self.pattern.find_iter(&text) {
            let piece: Vec<char> = m.as_str().bytes().map(|b| self.byte_chars[b as usize]).collect();
            let chunks = piece.len().div_ceil(MAX_WORD);
            for (k, chunk) in piece.chunks(MAX_WORD).enumerate() {
                for t in self.bpe(chunk, k + 1 == chunks) {
                    out.push(self.vocab.get(&t).copied().unwrap_or(unk));
                }
                if out.len() >= limit {
                    return;
                }
            }
        }
    }

    /// What the pipeline feeds the text encoder: start, at most `max_length − 2` tokens, end,
    /// then padding to `max_length`.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let mut ids = vec![self.bos];
        ids.extend(self.tokens_up_to(text, self.max_length - 2));
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);
        ids
    }
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_apply_by_rank_and_words_end_with_a_marker() {
        let d = std::env::temp_dir().join(format!("realfill-tok-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let vocab = r#"{"<|startoftext|>":0,"<|endoftext|>":1,"!":2,"a":3,"b":4,"ab</w>":5,"a</w>":6,"b</w>":7,"ab":8,"c</w>":9}"#;
        std::fs::write(d.join("vocab.json"), vocab).unwrap();
        std::fs::write(d.join("merges.txt"), "#version: 0.2\na b</w>\na b\n").unwrap();
        std::fs::write(d.join("special_tokens_map.json"), r#"{"pad_token":"!"}"#).unwrap();
        std::fs::write(d.join("tokenizer_config.json"), r#"{"model_max_length":6}"#).unwrap();
        let t = Tokenizer::load(&d).unwrap();
        // "AB" lower-cases to "ab" → a + b</w> merges to ab</w>; "c" alone; "a,b": a, ",", b.
        assert_eq!(t.tokens("AB  c"), vec![5, 9]);
        assert_eq!(t.encode("ab"), vec![0, 5, 1, 2, 2, 2]);
        assert_eq!(t.encode("ab ab ab ab ab").len(), 6, "truncated to the model's length");
        assert_eq!(t.encode("ab ab ab ab ab")[5], 1, "the end token survives truncation");
        assert_eq!(t.tokens("ab!c"), vec![5, 2, 9], "added tokens are matched in the raw text");
    }

    /// A crafted tokenizer whose merges chain ("b a" → "ba", "ba a" → "baa", …: each round
    /// merges one pair, so one long word takes a round per letter, each scanning the word)
    /// and a prompt of one 130,000-letter word: the work is bounded by what the encoder uses.
    #[test]
    fn a_long_prompt_over_chained_merges_costs_what_the_encoder_uses() {
        let d = std::env::temp_dir().join(format!("realfill-tok-chain-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let mut vocab = serde_json::Map::new();
        for (i, t) in ["<|startoftext|>", "<|endoftext|>", "a", "b", "a</w>"].iter().enumerate() {
            vocab.insert(t.to_string(), i.into());
        }
        let mut merges = String::from("#version: 0.2\n");
        let mut sym = "b".to_string();
        for i in 0..6000 {
            merges.push_str(&format!("{sym} a\n"));
            sym.push('a');
            vocab.insert(sym.clone(), (i + 5).into());
        }
        std::fs::write(d.join("vocab.json"), serde_json::Value::Object(vocab).to_string()).unwrap();
        std::fs::write(d.join("merges.txt"), merges).unwrap();
        let t = Tokenizer::load(&d).unwrap();
        let ids = t.encode(&format!("b{}", "a".repeat(130_000)));
        assert_eq!(ids.len(), 77);
        assert_eq!((ids[0], ids[1], ids[2], ids[76]), (0, 5 + 254, 2, 1), "b + 255 a merged, then single a's");
        // 301 letters: one chunk of 256 merged whole, then 45 letters no merge joins.
        assert_eq!(t.tokens(&format!("b{}", "a".repeat(300))).len(), 46);
    }
}
