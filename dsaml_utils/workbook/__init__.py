"""The numbered notebooks: the papermill runner (`dsaml workbook`) and the Session a notebook uses."""
