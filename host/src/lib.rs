//! swapbot: a Telegram assistant bot whose OpenAI backend is a hot-swappable WebAssembly plugin.

pub mod plugin;
