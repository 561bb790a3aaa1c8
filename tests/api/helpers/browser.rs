//! A real browser for the console's tests: Debian's `chromium` driven over
//! WebDriver (`chromium-driver`'s `chromedriver`, one per test on its own
//! port) through fantoccini. `scripts/ensure-chromium.sh` installs both.

use std::{net::TcpListener, process::Child, time::Duration};

use fantoccini::{Client, ClientBuilder, Locator};

use super::eventually;

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Self {
        let driver_path = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = std::process::Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {driver_path} ({e}): the console's browser tests need Debian's \
                     chromium and chromium-driver (scripts/ensure-chromium.sh installs them)"
                )
            });
        let profile = tempfile::tempdir().expect("profile dir");
        let caps: serde_json::Map<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1000",
                         format!("--user-data-dir={}", profile.path().display())]
            }
        }))
        .expect("capabilities");
        let url = format!("http://127.0.0.1:{port}");
        let client = eventually(
            Duration::from_secs(20),
            "chromedriver to start a session",
            || {
                let caps = caps.clone();
                let url = url.clone();
                async move {
                    ClientBuilder::rustls()
                        .ok()?
                        .capabilities(caps)
                        .connect(&url)
                        .await
                        .ok()
                }
            },
        )
        .await;
        Self {
            client,
            driver,
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    pub async fn css(&self, selector: &str) -> fantoccini::elements::Element {
        self.css_within(selector, Duration::from_secs(10)).await
    }

    /// [`Browser::css`] with a deadline of its own: an action's page (a
    /// replay, an export-then-purge) shows its end when the broker is done,
    /// which a loaded broker makes slower than a page load.
    pub async fn css_within(
        &self,
        selector: &str,
        deadline: Duration,
    ) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(deadline)
            .for_element(Locator::Css(selector))
            .await
        {
            Ok(element) => element,
            Err(e) => {
                // The page it got instead says why (an error page, a login).
                let url = self.client.current_url().await.map(|u| u.to_string());
                let page = self.client.source().await.unwrap_or_default();
                let page: String = page.chars().take(4000).collect();
                panic!("no {selector} on the page within {deadline:?}: {e}\n{url:?}\n{page}")
            }
        }
    }

    pub async fn all(&self, selector: &str) -> Vec<fantoccini::elements::Element> {
        self.client
            .find_all(Locator::Css(selector))
            .await
            .expect("find_all")
    }

    /// Clicks what `selector` finds and waits until the page it was on is
    /// gone, so what the test reads next is the page the click led to and
    /// never the one it left (whose elements go stale under the reader).
    pub async fn click_through(&self, selector: &str) {
        let old = self.css("html").await;
        self.css(selector)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {selector}: {e}"));
        eventually(
            Duration::from_secs(10),
            &format!("the click on {selector} to leave the page"),
            || async {
                match old.tag_name().await {
                    Err(e) if e.is_stale_element_reference() => Some(()),
                    _ => None,
                }
            },
        )
        .await;
    }

    pub async fn body_text(&self) -> String {
        self.css("body").await.text().await.expect("body text")
    }

    /// Fills the login form and submits it.
    pub async fn log_in(&self, base: &str, name: &str, password: &str) {
        self.goto(&format!("{base}/login")).await;
        self.css("input[name=name]")
            .await
            .send_keys(name)
            .await
            .expect("type");
        self.css("input[name=password]")
            .await
            .send_keys(password)
            .await
            .expect("type");
        self.click_through("form[action='/login'] button").await;
        let signed_in = self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("header .who"))
            .await;
        if signed_in.is_err() {
            let page = self.client.source().await.unwrap_or_default();
            panic!("not signed in as {name}: {page}");
        }
    }

    /// No alert or other dialog is open (a script that ran would have left one).
    pub async fn no_dialog(&self) -> bool {
        self.client.get_alert_text().await.is_err()
    }

    /// Saves a PNG of the page when SCREENSHOTS names a directory.
    pub async fn screenshot(&self, name: &str) {
        if let Ok(dir) = std::env::var("SCREENSHOTS") {
            let png = self.client.screenshot().await.expect("screenshot");
            std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png)
                .expect("write screenshot");
        }
    }

    pub async fn close(mut self) {
        drop(self.client.clone().close().await);
        drop(self.driver.kill());
        drop(self.driver.wait());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        drop(self.driver.kill());
    }
}
