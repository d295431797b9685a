// The login page: send the name and password as JSON, then load the app.
const form = document.getElementById("login-form");
const error = document.getElementById("login-error");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.textContent = "";
  const name = document.getElementById("login-name").value.trim();
  const password = document.getElementById("login-password").value;
  if (!name || !password) {
    error.textContent = "Enter your user name and your password.";
    return;
  }
  const button = document.getElementById("login-submit");
  button.disabled = true;
  try {
    const res = await fetch("/api/v1/session", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name, password }),
    });
    if (res.ok) {
      location.replace("/#/files/");
      location.reload();
      return;
    }
    let message = "The server could not log you in; try again in a moment.";
    try {
      const body = await res.json();
      if (res.status === 401) message = "Wrong user name or password. Check both and try again.";
      else if (res.status === 429) {
        const wait = res.headers.get("Retry-After") || "a few";
        message = `Too many failed attempts. Wait ${wait} seconds, then try again.`;
      } else if (body.message) message = body.message;
    } catch (_) { /* keep the general sentence */ }
    error.textContent = message;
  } catch (_) {
    error.textContent = "The server cannot be reached. Check your connection and try again.";
  } finally {
    button.disabled = false;
  }
});
