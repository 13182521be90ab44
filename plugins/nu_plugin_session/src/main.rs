use nu_plugin_session::SessionPlugin;

fn main() {
    nu_plugin_session::serve::serve(&SessionPlugin::default())
}
