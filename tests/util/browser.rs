//! A browser as far as the portal cares: a cookie jar, `Accept: text/html`, `Origin` on POST,
//! and redirects followed by hand (so tests can count them).

use std::collections::BTreeMap;

/// One browser profile against one site.
pub struct Browser {
    pub base: String,
    pub jar: BTreeMap<String, String>,
    client: reqwest::Client,
    /// `Set-Cookie` lines of the last response.
    pub last_set_cookies: Vec<String>,
}

/// A response, read whole.
pub struct Page {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// The value of the hidden form field `name`.
    pub fn field(&self, name: &str) -> Option<String> {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self.body.find(&marker)? + marker.len();
        let end = self.body[start..].find('"')? + start;
        Some(unescape(&self.body[start..end]))
    }

    /// The body with HTML character references decoded (minijinja escapes `/` too).
    pub fn text(&self) -> String {
        unescape(&self.body)
    }
}

/// Decodes the character references an HTML-escaping template writes.
pub fn unescape(s: &str) -> String {
    s.replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

impl Browser {
    pub fn new(base: &str) -> Browser {
        Browser {
            base: base.trim_end_matches('/').to_owned(),
            jar: BTreeMap::new(),
            client: super::client(),
            last_set_cookies: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn absorb(&mut self, headers: &reqwest::header::HeaderMap) {
        self.last_set_cookies.clear();
        for v in headers.get_all("set-cookie") {
            let line = v.to_str().unwrap().to_owned();
            let pair = line.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            let expired = line.contains("Max-Age=0");
            if expired {
                self.jar.remove(name);
            } else {
                self.jar.insert(name.to_owned(), value.to_owned());
            }
            self.last_set_cookies.push(line);
        }
        // Clear-Site-Data: "cookies" empties the jar, as browsers do.
        if headers
            .get("clear-site-data")
            .is_some_and(|v| v.to_str().unwrap().contains("\"cookies\""))
        {
            self.jar.clear();
        }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let r = self
            .client
            .get(self.url(path))
            .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.read(r).await
    }

    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let origin = self.base.clone();
        self.post_from(path, fields, Some(&origin)).await
    }

    pub async fn post_from(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
        origin: Option<&str>,
    ) -> Page {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut req = self
            .client
            .post(self.url(path))
            .header("accept", "text/html")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", self.cookie_header())
            .body(body);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let r = req.send().await.unwrap();
        self.read(r).await
    }

    async fn read(&mut self, r: reqwest::Response) -> Page {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        self.absorb(&headers);
        let body = r.text().await.unwrap();
        Page {
            status,
            headers,
            body,
        }
    }

    /// GETs `path` and follows redirects (at most 10); returns the final page and the hops.
    pub async fn follow(&mut self, path: &str) -> (Page, Vec<String>) {
        let mut hops = Vec::new();
        let mut page = self.get(path).await;
        while matches!(page.status, 301 | 302 | 303 | 307 | 308) {
            let location = page.header("location").unwrap().to_owned();
            hops.push(location.clone());
            assert!(hops.len() <= 10, "redirect loop: {hops:?}");
            page = self.get(&location).await;
        }
        (page, hops)
    }

    /// Signs in through the form; returns the answer to the POST.
    pub async fn sign_in(&mut self, user: &str, password: &str, rd: &str) -> Page {
        let login = self
            .get(&format!("/.portcullis/login?rd={}", super::encode(rd)))
            .await;
        assert_eq!(login.status, 200, "{}", login.body);
        let csrf = login
            .field("csrf")
            .expect("the sign-in form has a CSRF token");
        let rd = login.field("rd").unwrap();
        self.post(
            "/.portcullis/login",
            &[
                ("csrf", &csrf),
                ("rd", &rd),
                ("username", user),
                ("password", password),
            ],
        )
        .await
    }
}
