//! Line numbers of array elements in a JSON document that serde_json has already accepted, so that a
//! record inside `{"records": [...]}` or a Log Analytics `rows` array can be named by its line.

/// One step of the path to a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

struct Walker<'a, F: FnMut(&[Seg], usize)> {
    b: &'a [u8],
    i: usize,
    line: usize,
    path: Vec<Seg>,
    want: &'a dyn Fn(&[Seg]) -> bool,
    found: F,
}

impl<F: FnMut(&[Seg], usize)> Walker<'_, F> {
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            match c {
                b'\n' => self.line += 1,
                b' ' | b'\t' | b'\r' => {}
                _ => return,
            }
            self.i += 1;
        }
    }

    fn string(&mut self) -> Option<String> {
        // At the opening quote; keys are compared as written (escapes kept), which is enough for
        // the plain keys looked for.
        let start = self.i + 1;
        self.i += 1;
        while let Some(&c) = self.b.get(self.i) {
            match c {
                b'\\' => self.i += 2,
                b'"' => {
                    let s = String::from_utf8_lossy(self.b.get(start..self.i)?).into_owned();
                    self.i += 1;
                    return Some(s);
                }
                b'\n' => {
                    self.line += 1;
                    self.i += 1
                }
                _ => self.i += 1,
            }
        }
        None
    }

    fn value(&mut self) -> Option<()> {
        self.ws();
        match *self.b.get(self.i)? {
            b'{' => {
                self.i += 1;
                loop {
                    self.ws();
                    match *self.b.get(self.i)? {
                        b'}' => {
                            self.i += 1;
                            return Some(());
                        }
                        b',' => self.i += 1,
                        b'"' => {
                            let key = self.string()?;
                            self.ws();
                            if self.b.get(self.i) != Some(&b':') {
                                return None;
                            }
                            self.i += 1;
                            self.path.push(Seg::Key(key));
                            self.value()?;
                            self.path.pop();
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut n = 0;
                loop {
                    self.ws();
                    match *self.b.get(self.i)? {
                        b']' => {
                            self.i += 1;
                            return Some(());
                        }
                        b',' => self.i += 1,
                        _ => {
                            self.path.push(Seg::Index(n));
                            if (self.want)(&self.path) {
                                (self.found)(&self.path, self.line);
                            }
                            self.value()?;
                            self.path.pop();
                            n += 1;
                        }
                    }
                }
            }
            b'"' => self.string().map(|_| ()),
            _ => {
                while let Some(&c) = self.b.get(self.i) {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                        break;
                    }
                    self.i += 1;
                }
                Some(())
            }
        }
    }
}

/// The line (1-based, counted from `first_line`) of every array element whose path `want` accepts,
/// in document order, with its path.
pub fn element_lines(
    text: &str,
    first_line: usize,
    want: &dyn Fn(&[Seg]) -> bool,
) -> Vec<(Vec<Seg>, usize)> {
    let mut out = Vec::new();
    let mut w = Walker {
        b: text.as_bytes(),
        i: 0,
        line: first_line,
        path: Vec::new(),
        want,
        found: |p: &[Seg], l: usize| out.push((p.to_vec(), l)),
    };
    let _ = w.value();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_record_lines() {
        let text = "{\n \"records\": [\n  {\"a\": \"x]\\\"\"},\n\n  {\"b\": [1,2]}\n ]\n}";
        let lines = element_lines(
            text,
            1,
            &|p| matches!(p, [Seg::Key(k), Seg::Index(_)] if k == "records"),
        );
        let lines: Vec<usize> = lines.into_iter().map(|(_, l)| l).collect();
        assert_eq!(lines, vec![3, 5]);
    }
}
